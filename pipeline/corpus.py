"""The built-in procedural drum corpus: the embedded default dataset, so `make demo` needs no download.

Each song is built from per-style bar templates (one string per drum, one character per 16th step):

    X  accented hit        x  hit               o  optional hit, kept or not once per song and groove
    g  ghost-note slot (drawn anew in every bar with `ghost_prob`)                   .  rest

A song is a sequence of sections (intro, verse, chorus, bridge, outro) made of `bars_per_phrase`-bar
phrases. Each section kind plays its own groove, realised once per song (the `o` slots decided), so a
verse sounds the same every time it returns. Phrases end with fills (more often at section ends), a
fill is answered by a crash on the next downbeat, and the song ends on a crash. Per-bar noise
(ghost notes, dropped and added hits, velocity jitter) keeps it from being trivially memorised.

Python draws the random numbers, a numba kernel assembles the song from them; song `i` is drawn
from `SeedSequence(seed, spawn_key=(i,))`, so it does not depend on `num_songs` and growing the
corpus keeps the earlier songs. See docs/corpus.md.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import numpy as np
from numba import njit

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


_KINDS = "ABC"          # groove kinds: every style has the three, in this order (their draw order)
assert all(list(st.grooves) == list(_KINDS) for st in STYLES.values())
_OPTIONAL = {name: {kind: [np.flatnonzero(t == OPTIONAL) for t in ts] for kind, ts in compiled.items()}
             for name, compiled in _COMPILED.items()}


def _grooves(rng: np.random.Generator, style: str) -> np.ndarray:
    """The song's groove of each kind, stacked [kinds, steps_per_bar, D]: a template chosen and its
    optional slots decided, once."""
    templates = _COMPILED[style]
    stack = np.empty((len(_KINDS), *templates["A"][0].shape), np.int8)
    for j, kind in enumerate(_KINDS):
        t = int(rng.integers(len(templates[kind])))
        stack[j] = templates[kind][t]
        slots = _OPTIONAL[style][kind][t]
        if len(slots):                  # (rng.random(0) would draw nothing)
            stack[j].flat[slots] = np.where(rng.random(len(slots)) < 0.5, HIT, REST)
    return stack


_BAR_GROOVE = {k: _KINDS.index(g) for k, g in SECTION_GROOVE.items()}
_BEATS_CDF = FILL_BEATS_CDF.tolist()


def _style_base(style: Style) -> np.ndarray:
    base = BASE_VELOCITY.copy()
    for drum, v in (style.velocity or {}).items():
        base[DRUMS.index(drum)] = v
    return base


_BASE = {name: _style_base(st) for name, st in STYLES.items()}
_ACCENT = {name: np.array(SWING_ACCENT if st.swing else STRAIGHT_ACCENT, np.float32) for name, st in STYLES.items()}


def generate_song(i: int, seed: int = 0, **options) -> Song:
    """Song `i` of the corpus for `seed`; independent of how many songs are generated."""
    return _song(int(i), int(seed), _options(options))


def song_maker(seed: int = 0, **options) -> Callable[[int], Song]:
    """`generate_song` with the options checked once: i -> song i (what ingest's tasks call)."""
    opts, seed = _options(options), int(seed)
    return lambda i: _song(int(i), seed, opts)


def _song(i: int, seed: int, opts: CorpusOptions) -> Song:
    """Python draws every random number, in a fixed order (the song's layout decides how many);
    `_assemble` (numba) lays the grooves, humanises and writes the fills from them. The order of the
    draws and the float32/float64 steps of the arithmetic are the corpus: changing either changes
    every song (tests/unit/test_corpus.py pins the corpus by hash)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    style = STYLES[opts.styles[i % len(opts.styles)]]     # round robin: every style, balanced
    spb, bpp = style.steps_per_bar, opts.bars_per_phrase
    structure = _structure(rng, opts)
    stack = _grooves(rng, style.name)
    bar_kind = [k for k, n in structure for _ in range(n * bpp)]
    nbars, D = len(bar_kind), len(DRUMS)
    T = nbars * spb
    u = rng.random((T, D), dtype=np.float32)       # one draw decides ghosts, drops and stray hits
    z = rng.standard_normal((T, D), dtype=np.float32)
    song_gain = np.float32(rng.normal(0.0, 6.0))
    starts = np.cumsum([0] + [n * bpp for _, n in structure]).tolist()  # section starts, in bars
    fill_bars, fill_beats, fill_u = _draw_fills(rng, style, opts, nbars, {b - 1 for b in starts[1:]})
    hits, velocity = _assemble(
        stack, np.array([_BAR_GROOVE[k] for k in bar_kind], np.int64),
        np.array([SECTION_GAIN[k] for k in bar_kind], np.float32), u, z,
        np.float32(opts.ghost_prob), np.float32(opts.drop_prob), np.float32(1.0 - opts.add_prob),
        _BASE[style.name], _ACCENT[style.name], song_gain, np.float32(opts.velocity_jitter),
        np.float32(0.5 * opts.velocity_jitter), fill_bars, fill_beats, fill_u,
        _FILL_TYPE_CDF[style.name], opts.ending)
    sections = np.array(list(zip(starts[:-1], starts[1:])), np.int64) * spb
    return Song(
        name=f"builtin/{style.name}_{i:04d}", hits=hits, velocity=velocity, source="builtin",
        style=style.name, split="", drummer="builtin", beat_type="beat", steps_per_bar=spb,
        beats_per_bar=style.beats_per_bar, bpm=float(rng.integers(style.bpm[0], style.bpm[1] + 1)),
        sections=sections)


def _draw_fills(rng: np.random.Generator, style: Style, opts: CorpusOptions, nbars: int, section_last: set):
    """Which bars end in a fill, each fill's length in beats, and each fill's uniforms (rhythm per
    beat, straight ending, fill type, kick per beat: nbeats + 2 + steps), concatenated."""
    bpp, last_bar = opts.bars_per_phrase, nbars - 1
    phrase_ends = range(bpp - 1, last_bar, bpp)                     # the last bar is never filled
    r = rng.random(len(phrase_ends)).tolist()
    fill_bars = [b for b, x in zip(phrase_ends, r)
                 if x < (opts.section_fill_prob if b in section_last else opts.phrase_fill_prob) * style.fill_scale]
    if opts.ending:                      # the song's last fill leads into the final crash
        fill_bars = [b for b in fill_bars if b < last_bar - 1] + [last_bar - 1]
    beats, us = [], []
    for _ in fill_bars:
        nbeats = (1, 2, style.beats_per_bar)[min(bisect.bisect_right(_BEATS_CDF, rng.random()), 2)]
        beats.append(nbeats)
        us.append(rng.random(nbeats + 2 + nbeats * STEPS_PER_BEAT))
    return (np.array(fill_bars, np.int64), np.array(beats, np.int64),
            np.concatenate(us) if us else np.zeros(0))


@njit(cache=True, nogil=True)
def _cdf_draw(cdf, x):
    """Categorical draw from uniform `x`: np.searchsorted(cdf, x, side="right"), capped at the last category."""
    n = 0
    while n < len(cdf) and cdf[n] <= x:
        n += 1
    return min(n, len(cdf) - 1)


@njit(cache=True, nogil=True)
def _assemble(stack, bar_groove, bar_gain, u, z, ghost_p, drop_p, stray_above, base, accent, song_gain,
              jitter, fill_jitter, fill_bars, fill_beats, fill_u, type_cdf, ending):
    """hits, velocity uint8 [T, D] of one song from its grooves and draws (see `_song`)."""
    T, D = u.shape
    spb = stack.shape[1]
    hits = np.zeros((T, D), np.uint8)
    vel = np.zeros((T, D), np.float64)
    _humanise(stack, bar_groove, bar_gain, u, z, ghost_p, drop_p, stray_above, base, accent, song_gain,
              jitter, hits, vel)
    pos = 0
    for j in range(len(fill_bars)):
        nbeats = fill_beats[j]
        n = nbeats + 2 + nbeats * STEPS_PER_BEAT
        _write_fill(hits, vel, z, (fill_bars[j] + 1) * spb, nbeats, fill_u[pos:pos + n], type_cdf, fill_jitter)
        pos += n
        down = (fill_bars[j] + 1) * spb       # a crash (and kick) on the downbeat after the fill
        if down < T:
            hits[down, CH] = 0
            hits[down, RD] = 0
            hits[down, CR] = 1
            hits[down, K] = 1
            vel[down, CR] = BASE_VELOCITY[CR] + bar_gain[down // spb] + jitter * z[down, CR]
    if ending:
        last = T - spb
        hits[last:] = 0
        hits[last, K] = 1
        hits[last, CR] = 1
    velocity = np.zeros((T, D), np.uint8)
    for t in range(T):
        if hits[t, OH]:                        # one hi-hat at a time
            hits[t, CH] = 0
        for d in range(D):
            if hits[t, d]:
                velocity[t, d] = np.uint8(min(max(np.rint(vel[t, d]), 1.0), 127.0))
    return hits, velocity


@njit(cache=True, nogil=True)
def _humanise(stack, bar_groove, bar_gain, u, z, ghost_p, drop_p, stray_above, base, accent, song_gain,
              jitter, hits, vel):
    """The grooves laid bar by bar, with ghosts, drops, stray hits (K, S, CH) and velocities. The
    velocity sum is float32 for drum base + metric accent, float64 from there (as numpy promoted it)."""
    T, D = u.shape
    spb = stack.shape[1]
    for t in range(T):
        bar = t // spb
        for d in range(D):
            c = stack[bar_groove[bar], t % spb, d]
            x = u[t, d]
            ghost = c == GHOST and x < ghost_p
            drop = c == HIT and x < drop_p
            stray = c == REST and x > stray_above and (d == K or d == S or d == CH)
            hits[t, d] = (c >= HIT and not drop) or ghost or stray
            if ghost or (stray and d == S):
                vel[t, d] = np.float32(32.0) + np.float32(6.0) * z[t, d]
            else:
                v = np.float64(base[d] + accent[t % 4]) + (14.0 if c == ACCENT else 0.0)
                vel[t, d] = v + np.float64(bar_gain[bar]) + np.float64(song_gain) + np.float64(jitter * z[t, d])


@njit(cache=True, nogil=True)
def _write_fill(hits, vel, z, end, nbeats, fu, type_cdf, fill_jitter):
    """One fill of `nbeats` beats ending at step `end`: the hands cleared, the fill's hits written
    with a crescendo velocity. fu: rhythm per beat, straight ending, fill type, kick per beat."""
    L = nbeats * STEPS_PER_BEAT
    s0 = end - L
    rhythm = np.empty(nbeats, np.int64)
    for b in range(nbeats):
        rhythm[b] = _cdf_draw(FILL_RHYTHM_CDF, fu[b])
    if fu[nbeats] < 0.5:                       # fills tend to end on straight 16ths
        rhythm[nbeats - 1] = 0
    kind = _cdf_draw(type_cdf, fu[nbeats + 1])  # FILL_TYPES: snare, toms, snare_toms, unison
    f = np.zeros((L, hits.shape[1]), np.bool_)
    for k in range(L):
        on = FILL_RHYTHMS[rhythm[k // STEPS_PER_BEAT], k % STEPS_PER_BEAT]
        if kind == 0:
            f[k, S] = on
        elif kind == 1:                        # descend around the kit: snare, high, mid, low tom
            if on:
                f[k, (S, HT, MT, LT)[k * 4 // L]] = True
        elif kind == 2:                        # snare on each beat's first 8th, descending toms on the second
            if on:
                f[k, S if k % 4 < 2 else (HT, MT, LT)[k * 3 // L]] = True
        elif k % 2 == 0:                       # unison 8ths on kick and snare
            f[k, S] = f[k, K] = True
        if kind != 3 and k % STEPS_PER_BEAT == 0 and fu[nbeats + 2 + k] < 0.5:
            f[k, K] = True
    den = max(L - 1, 1)
    for k in range(L):
        t = s0 + k
        for d in range(hits.shape[1]):
            if d != K:                         # a fill replaces the hands, not the kick
                hits[t, d] = 0
            if f[k, d]:
                hits[t, d] = 1
                vel[t, d] = 84.0 + 26.0 * k / den + np.float64(fill_jitter * z[t, d])


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
