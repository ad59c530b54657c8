"""The built-in procedural drum corpus: the embedded default dataset, so `make demo` needs no download.

Each song is built from per-style bar templates (one string per drum, one character per 16th step):

    X  accented hit        x  hit               o  optional hit, kept or not once per song and groove
    g  ghost-note slot (drawn anew in every bar with `ghost_prob`)                   .  rest

A song is a sequence of sections (intro, verse, chorus, bridge, outro) made of `bars_per_phrase`-bar
phrases. Each section kind plays its own groove, realised once per song (the `o` slots decided), so a
verse sounds the same every time it returns. Phrases end with fills (more often at section ends), a
fill is answered by a crash on the next downbeat, and the song ends on a crash. Per-bar noise
(ghost notes, dropped and added hits, velocity jitter) keeps it from being trivially memorised.

Everything is vectorised per song; song `i` is drawn from `SeedSequence(seed, spawn_key=(i,))`, so it
does not depend on `num_songs` and growing the corpus keeps the earlier songs. See docs/corpus.md.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from pipeline.drums import DrumMap
from pipeline.store import Song

STEPS_PER_BEAT = 4  # 16th-note grid: steps_per_quarter = 4
DRUMS = ("kick", "snare", "closed_hihat", "open_hihat", "low_tom", "mid_tom", "high_tom", "crash", "ride")
K, S, CH, OH, LT, MT, HT, CR, RD = range(len(DRUMS))
HANDS = [S, CH, OH, LT, MT, HT, CR, RD]          # what a fill clears: everything but the kick
CODES = {".": 0, "g": 1, "o": 2, "x": 3, "X": 4}
REST, GHOST, OPTIONAL, HIT, ACCENT = range(5)

# Base velocity of each drum (before accents and jitter).
BASE_VELOCITY = np.array([100, 98, 78, 84, 96, 94, 92, 112, 82], np.float32)
# Metric accent by position in the beat: on the beat, 16th, 8th off-beat, 16th.
STRAIGHT_ACCENT = (12.0, -12.0, 0.0, -12.0)
SWING_ACCENT = (12.0, -12.0, -12.0, 2.0)   # shuffle: the swung 8th falls on the beat's last 16th

# Fill rhythms of one beat (4 sixteenths) and how often each is used.
FILL_RHYTHMS = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 0, 1, 0], [1, 1, 1, 0]], bool)
FILL_RHYTHM_P = np.array([0.35, 0.2, 0.15, 0.2, 0.1])
FILL_TYPES = ("snare", "toms", "snare_toms", "unison")
FILL_RHYTHM_CDF = np.cumsum(FILL_RHYTHM_P)
FILL_BEATS_CDF = np.cumsum([0.3, 0.45, 0.25])   # a fill lasts 1 beat, 2 beats or the whole bar


def _draw(cdf: np.ndarray, u):
    """Categorical draw(s) from uniform(s) `u` (cheaper than Generator.choice in a per-fill loop)."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


@dataclass(frozen=True)
class Style:
    name: str
    steps_per_bar: int
    beats_per_bar: int
    bpm: tuple[int, int]
    grooves: dict            # groove kind "A" (verse/outro), "B" (chorus), "C" (intro/bridge) -> [template]
    fill_types: tuple[float, ...]   # weights over FILL_TYPES
    fill_scale: float = 1.0         # scales the fill probabilities (hip-hop and bossa fill less)
    swing: bool = False
    velocity: dict | None = None    # per-drum base velocity overrides (bossa's soft cross-stick)


STYLES = {
    "rock": Style("rock", 16, 4, (100, 140), {
        "A": [dict(kick="x.o.....x.x..o..", snare="....X.....g.X..g", closed_hihat="X.x.X.x.X.x.X.x."),
              dict(kick="x......ox.x.....", snare="....X.......X...", closed_hihat="X.x.X.x.X.x.X.xo")],
        "B": [dict(kick="x.o.....x.x..o..", snare="....X.......X...", ride="X.x.X.x.X.x.X.x."),
              dict(kick="x.x.....x.x.....", snare="....X.......X...", open_hihat="X.x.X.x.X.x.X.x.")],
        "C": [dict(kick="x.......x.......", closed_hihat="x.x.x.x.x.x.x.x."),
              dict(kick="x.......x.......", ride="x...x...x...x...", snare="............o...")],
    }, fill_types=(0.3, 0.35, 0.25, 0.1)),
    "funk": Style("funk", 16, 4, (88, 115), {
        "A": [dict(kick="x.o....x..x..o..", snare="....X..g.g.gX..g", closed_hihat="XxxxXxxxXxxxXxxx"),
              dict(kick="x..x..x...x.....", snare="....X..g.g..X.g.", closed_hihat="X.x.X.x.X.x.X.x.",
                   open_hihat="......o.......o.")],
        "B": [dict(kick="x.x....x..x..x..", snare="....X.g.g.g.X.g.", closed_hihat="X.xxX.xxX.xxX.xx",
                   open_hihat="..o.......o.....")],
        "C": [dict(kick="x.........x.....", snare="....X.......X...", closed_hihat="xxxxxxxxxxxxxxxx")],
    }, fill_types=(0.45, 0.2, 0.3, 0.05)),
    "shuffle": Style("shuffle", 16, 4, (90, 140), {
        "A": [dict(kick="x.......x..o....", snare="....X.......X...", closed_hihat="X..xX..xX..xX..x"),
              dict(kick="x..o....x.......", snare="....X..g....X..g", closed_hihat="X..xX..xX..xX..x")],
        "B": [dict(kick="x..x....x..x....", snare="....X.......X...", ride="X..xX..xX..xX..x")],
        "C": [dict(kick="x.......x.......", snare="...g...g...g...g", closed_hihat="X..xX..xX..xX..x")],
    }, fill_types=(0.4, 0.3, 0.2, 0.1), swing=True),
    "bossa": Style("bossa", 16, 4, (110, 150), {
        "A": [dict(kick="x..xx..xx..xx..x", snare="x..x..x...x..x..", closed_hihat="x.x.x.x.x.x.x.x."),
              dict(kick="x..xx..xx..xx..x", snare="..x..x...x..x...", closed_hihat="xxxxxxxxxxxxxxxx")],
        "B": [dict(kick="x..xx..xx..xx..x", snare="x..x..x...x..x..", ride="x.x.x.x.x.x.x.x.")],
        "C": [dict(kick="x..xx..xx..xx..x", closed_hihat="x.x.x.x.x.x.x.x.")],
    }, fill_types=(0.3, 0.5, 0.2, 0.0), fill_scale=0.6, velocity={"kick": 78, "snare": 70}),
    "hiphop": Style("hiphop", 16, 4, (80, 100), {
        "A": [dict(kick="x......x.xo.....", snare="....X.......X...", closed_hihat="x.x.x.x.x.x.x.x."),
              dict(kick="x.o...x...x..o..", snare="....X..g....X...", closed_hihat="xxx.x.x.xxx.x.x.")],
        "B": [dict(kick="x......x.x.x..o.", snare="....X.......X..g", closed_hihat="xxxxxxxxxxxxxx.x",
                   open_hihat="..............o.")],
        "C": [dict(kick="x......x.x......", closed_hihat="x.x.x.x.x.x.x.x.")],
    }, fill_types=(0.5, 0.2, 0.1, 0.2), fill_scale=0.5),
    "waltz": Style("waltz", 12, 3, (90, 160), {
        "A": [dict(kick="x...........", snare="....x...x...", closed_hihat="x.x.x.x.x.x."),
              dict(kick="x.......o...", snare="....x...x...", ride="x...x..xx...")],
        "B": [dict(kick="x.......x...", snare="....X...X...", ride="X.x.x.x.x.x."),
              dict(kick="x...........", snare="....X...X...", open_hihat="x...x...x...")],
        "C": [dict(kick="x...........", closed_hihat="....x...x...")],
    }, fill_types=(0.3, 0.4, 0.3, 0.0)),
}

# Section kind -> groove kind, and the dynamics of each section (added to every velocity).
SECTION_GROOVE = {"intro": "C", "verse": "A", "chorus": "B", "bridge": "C", "outro": "A"}
SECTION_GAIN = {"intro": -8.0, "verse": 0.0, "chorus": 8.0, "bridge": -4.0, "outro": 0.0}


@dataclass(frozen=True)
class CorpusOptions:
    """Every option of conf/data/builtin.yaml `corpus:` besides num_songs and seed."""

    styles: tuple[str, ...] = tuple(STYLES)
    min_bars: int = 28               # song length is drawn in [min_bars, max_bars], in whole phrases
    max_bars: int = 64
    bars_per_phrase: int = 4
    phrase_fill_prob: float = 0.35   # fill at the end of a phrase inside a section
    section_fill_prob: float = 0.9   # fill at the end of a section
    ghost_prob: float = 0.35         # each `g` slot, every bar
    drop_prob: float = 0.03          # each unaccented groove hit, every bar
    add_prob: float = 0.006          # stray kick / snare ghost / hi-hat on a rest
    velocity_jitter: float = 7.0     # std of the per-hit velocity noise
    ending: bool = True              # last bar: a crash on the downbeat, then silence

    def __post_init__(self):
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or not self.styles:
            raise ValueError(f"corpus.styles: unknown {unknown or 'empty list'}; choose from {list(STYLES)}")
        if not 1 <= self.bars_per_phrase or not 2 * self.bars_per_phrase <= self.min_bars <= self.max_bars:
            raise ValueError("corpus: need 1 <= bars_per_phrase, 2*bars_per_phrase <= min_bars <= max_bars, "
                             f"got {self.bars_per_phrase}, {self.min_bars}, {self.max_bars}")


def _options(options: dict) -> CorpusOptions:
    known = {f.name for f in fields(CorpusOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"corpus: unknown option(s) {unknown}; known: num_songs, seed, {sorted(known)}")
    if "styles" in options:
        options = {**options, "styles": tuple(str(s) for s in options["styles"])}
    return CorpusOptions(**options)


def _compile(template: dict, steps_per_bar: int) -> np.ndarray:
    """Template strings -> int8 codes [steps_per_bar, D]."""
    codes = np.zeros((steps_per_bar, len(DRUMS)), np.int8)
    for drum, pattern in template.items():
        assert len(pattern) == steps_per_bar, (drum, pattern)
        codes[:, DRUMS.index(drum)] = [CODES[c] for c in pattern]
    return codes


_FILL_TYPE_CDF = {name: np.cumsum(st.fill_types) / sum(st.fill_types) for name, st in STYLES.items()}
_COMPILED = {name: {kind: [_compile(t, st.steps_per_bar) for t in ts] for kind, ts in st.grooves.items()}
             for name, st in STYLES.items()}


def _structure(rng: np.random.Generator, opts: CorpusOptions) -> list[tuple[str, int]]:
    """(section kind, phrases) from intro to outro, about `target` bars long."""
    bpp = opts.bars_per_phrase
    target = int(rng.integers(opts.min_bars, opts.max_bars + 1)) // bpp
    sections, used = [("intro", 1)], 2          # intro + outro, one phrase each
    body = ["verse", "chorus"] * 2 + ["bridge", "chorus"] + ["verse", "chorus"] * 8
    for kind in body:
        if used >= target:
            break
        n = min(int(rng.integers(1, 3)), target - used)
        sections.append((kind, n))
        used += n
    sections.append(("outro", 1))
    return sections


def _grooves(rng: np.random.Generator, style: str) -> dict[str, np.ndarray]:
    """The song's groove of each kind: a template chosen and its optional slots decided, once."""
    out = {}
    for kind, templates in _COMPILED[style].items():
        codes = templates[int(rng.integers(len(templates)))].copy()
        optional = codes == OPTIONAL
        codes[optional] = np.where(rng.random(int(optional.sum())) < 0.5, HIT, REST)
        out[kind] = codes
    return out


def _fill(rng: np.random.Generator, style: Style, nbeats: int) -> tuple[np.ndarray, np.ndarray]:
    """One fill of `nbeats` beats: hits [L, D] bool and a crescendo velocity [L]."""
    L = nbeats * STEPS_PER_BEAT
    k = np.arange(L)
    u = rng.random(nbeats + 2 + L)
    rhythm = _draw(FILL_RHYTHM_CDF, u[:nbeats])
    rhythm[-1] = 0 if u[nbeats] < 0.5 else rhythm[-1]     # fills tend to end on straight 16ths
    on = FILL_RHYTHMS[rhythm].reshape(-1)
    kind = FILL_TYPES[int(_draw(_FILL_TYPE_CDF[style.name], u[nbeats + 1]))]
    hits = np.zeros((L, len(DRUMS)), bool)
    if kind == "snare":
        hits[on, S] = True
    elif kind == "toms":        # descend around the kit: snare, high, mid, low tom
        seq = np.array([S, HT, MT, LT])
        hits[k[on], seq[k[on] * len(seq) // L]] = True
    elif kind == "snare_toms":  # snare on the first 8th of each beat, descending toms on the second
        toms = np.array([HT, MT, LT])
        drum = np.where(k % 4 < 2, S, toms[k * len(toms) // L])
        hits[k[on], drum[on]] = True
    else:                       # unison 8ths on kick and snare
        on = k % 2 == 0
        hits[on, S] = hits[on, K] = True
    if kind != "unison":
        hits[(k % STEPS_PER_BEAT == 0) & (u[nbeats + 2:] < 0.5), K] = True
    velocity = 84.0 + 26.0 * k / max(L - 1, 1)
    return hits, velocity


def generate_song(i: int, seed: int = 0, **options) -> Song:
    """Song `i` of the corpus for `seed`; independent of how many songs are generated."""
    return _song(int(i), int(seed), _options(options))


def _song(i: int, seed: int, opts: CorpusOptions) -> Song:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    style = STYLES[opts.styles[i % len(opts.styles)]]     # round robin: every style, balanced
    spb, bpp = style.steps_per_bar, opts.bars_per_phrase
    structure = _structure(rng, opts)
    grooves = _grooves(rng, style.name)

    # Lay the section grooves bar by bar: codes [T, D].
    bar_kind = np.concatenate([[k] * (n * bpp) for k, n in structure])
    nbars, T, D = len(bar_kind), len(bar_kind) * spb, len(DRUMS)
    kinds = sorted(grooves)
    stack = np.stack([grooves[k] for k in kinds])
    bar_groove = np.array([kinds.index(SECTION_GROOVE[k]) for k in bar_kind])
    codes = stack[bar_groove].reshape(T, D)
    gain = np.repeat(np.array([SECTION_GAIN[k] for k in bar_kind], np.float32), spb)

    # Humanise: one uniform draw decides ghosts, drops and stray hits (their masks are disjoint).
    u = rng.random((T, D), dtype=np.float32)
    z = rng.standard_normal((T, D), dtype=np.float32)
    ghost = (codes == GHOST) & (u < opts.ghost_prob)
    drop = (codes == HIT) & (u < opts.drop_prob)
    stray = (codes == REST) & (u > 1.0 - opts.add_prob)
    stray[:, [OH, LT, MT, HT, CR, RD]] = False
    hits = ((codes >= HIT) & ~drop) | ghost | stray

    base = BASE_VELOCITY.copy()
    for drum, v in (style.velocity or {}).items():
        base[DRUMS.index(drum)] = v
    accent = np.tile(np.array(SWING_ACCENT if style.swing else STRAIGHT_ACCENT, np.float32), spb // 4)
    song_gain = np.float32(rng.normal(0.0, 6.0))
    vel = (base[None, :] + np.tile(accent, nbars)[:, None] + 14.0 * (codes == ACCENT)
           + gain[:, None] + song_gain + np.float32(opts.velocity_jitter) * z)
    soft = ghost | (stray & (np.arange(D) == S))
    vel[soft] = 32.0 + 6.0 * z[soft]

    # Fills at phrase ends, a crash on the downbeat after each fill, then the ending.
    starts = np.cumsum([0] + [n * bpp for _, n in structure])          # section starts, in bars
    last_bar = nbars - 1
    phrase_ends = np.arange(bpp - 1, last_bar, bpp)                   # the last bar is never filled
    p = np.where(np.isin(phrase_ends, starts[1:] - 1), opts.section_fill_prob, opts.phrase_fill_prob)
    fill_bars = phrase_ends[rng.random(len(phrase_ends)) < p * style.fill_scale].tolist()
    if opts.ending:                      # the song's last fill leads into the final crash
        fill_bars = [b for b in fill_bars if b < last_bar - 1] + [last_bar - 1]
    for bar in fill_bars:
        nbeats = (1, 2, style.beats_per_bar)[int(_draw(FILL_BEATS_CDF, rng.random()))]
        f_hits, f_vel = _fill(rng, style, nbeats)
        s0 = (bar + 1) * spb - len(f_hits)
        region = slice(s0, s0 + len(f_hits))
        hits[region][:, HANDS] = False
        hits[region] |= f_hits
        vel[region] = np.where(f_hits, f_vel[:, None] + 0.5 * opts.velocity_jitter * z[region], vel[region])
        down = (bar + 1) * spb
        if down < T:
            hits[down, [CH, RD]] = False
            hits[down, [CR, K]] = True
            vel[down, CR] = BASE_VELOCITY[CR] + gain[down] + opts.velocity_jitter * z[down, CR]
    if opts.ending:
        hits[last_bar * spb:] = False
        hits[last_bar * spb, [K, CR]] = True

    hits[:, CH] &= ~hits[:, OH]         # one hi-hat at a time
    hits = hits.astype(np.uint8)
    velocity = (np.clip(np.rint(vel), 1, 127) * hits).astype(np.uint8)
    sections = np.stack([starts[:-1], starts[1:]], axis=1).astype(np.int64) * spb
    return Song(
        name=f"builtin/{style.name}_{i:04d}", hits=hits, velocity=velocity, source="builtin",
        style=style.name, split="", drummer="builtin", beat_type="beat", steps_per_bar=spb,
        beats_per_bar=style.beats_per_bar, bpm=float(rng.integers(style.bpm[0], style.bpm[1] + 1)),
        sections=sections)


def iter_corpus(num_songs: int = 400, seed: int = 0, **options) -> Iterator[Song]:
    """Songs 0..num_songs-1 one at a time (memory stays at one song)."""
    opts = _options(options)
    check_drum_map()
    for i in range(int(num_songs)):
        yield _song(i, int(seed), opts)


def generate_corpus(num_songs: int = 400, seed: int = 0, **options) -> list[Song]:
    """The built-in corpus: `num_songs` procedural songs, deterministic by `seed` (see module doc)."""
    return list(iter_corpus(num_songs, seed, **options))


def check_drum_map(names=None) -> None:
    """The templates are written for the 9-class map's columns; fail loudly for any other order."""
    names = DrumMap.default().names if names is None else names
    if tuple(names) != DRUMS:
        raise ValueError(f"built-in corpus expects drum classes {DRUMS}, the drum map has {tuple(names)}")
