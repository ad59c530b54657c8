"""The readable definition of every metric: plain numpy/Python, one window at a time.

Same signatures and outputs as the compiled `kernels` package. It is the oracle of the tests
and the baseline of `benchmarks/metrics.py`; docs/metrics.md gives the formulas in words.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace

import numpy as np

from kernels.families import FAMILIES, HIT_FAMILIES, PLAYED_FAMILIES
from kernels.spec import (SECTION_SCHEMA, SONG_SCHEMA, STRUCTURE_LAGS, check_bar_capacity, check_beat,
                          check_expressive, check_positive, check_roll, check_sections, default_dense_threshold,
                          empty_window_outputs, window_grid)


# --- one window (seq: bool [L, D], t0: absolute step of seq[0]) -------------------------------

@dataclass
class Window:
    """One window: what a family's twin reads. seq bool [L, D]; velocity float64 and x (timing in
    steps) [L, D] for the playing family; a = its first song step; p = the options (Params)."""

    seq: np.ndarray
    a: int
    p: SimpleNamespace
    velocity: np.ndarray | None = None
    x: np.ndarray | None = None


def _hit_density(seq):
    total_hits = seq.sum(axis=1)
    L = len(seq)
    return total_hits.sum() / L, int(total_hits.max()), seq.sum(axis=0) / L


def _co_occurrence(seq):
    return float(np.mean(seq.sum(axis=1) >= 2))


def _syncopation(seq, t0, steps_per_bar, beat):
    t = t0 + np.arange(len(seq))
    weak = (t % steps_per_bar) % beat != 0
    total = seq.sum()
    return float(seq[weak].sum() / total) if total else 0.0


def _transitions(seq):
    prev, nxt = seq[:-1].astype(np.int64), seq[1:].astype(np.int64)
    counts = prev.T @ nxt                      # [i, j] = #(i at t and j at t+1)
    denom = prev.sum(axis=0)[:, None]
    return np.divide(counts, denom, out=np.zeros(counts.shape), where=denom > 0)


def _ioi_stats(seq, bins, fast_threshold):
    D = seq.shape[1]
    mean, var, hist, fast = np.zeros(D), np.zeros(D), np.zeros(bins, np.int64), 0
    for d in range(D):
        ioi = np.diff(np.flatnonzero(seq[:, d]))
        if len(ioi):
            mean[d], var[d] = ioi.mean(), ioi.var()
            for x in ioi:
                hist[min(x, bins) - 1] += 1
            fast += int((ioi <= fast_threshold).sum())
    return mean, var, hist, fast


def _n_grams(seq, n):
    """Counter of exact n-grams: the bytes of n consecutive step rows (no hashing of values)."""
    return Counter(seq[s:s + n].tobytes() for s in range(len(seq) - n + 1))


def _entropy(counter):
    total = sum(counter.values())
    return -sum(c / total * math.log2(c / total) for c in counter.values()) if total else 0.0


def _bar_hits(seq, steps_per_bar, num_bars):
    out = np.zeros(num_bars, np.int64)
    for k in range(min(num_bars, len(seq) // steps_per_bar)):
        out[k] = seq[k * steps_per_bar:(k + 1) * steps_per_bar].sum()
    return out


def _fraction_dense_bars(seq, steps_per_bar, threshold):
    bars = [seq[k * steps_per_bar:(k + 1) * steps_per_bar] for k in range(len(seq) // steps_per_bar)]
    if not bars:
        return 0.0
    return float(np.mean([bar.any(axis=0).sum() > threshold for bar in bars]))


def rhythm_window(win: Window) -> dict:
    """The rhythm family (kernels/rhythm.py) of one window."""
    seq, p = win.seq, win.p
    out = {}
    out["avg_hits"], out["max_hits"], out["drum_density"] = _hit_density(seq)
    out["co_occurrence"] = _co_occurrence(seq)
    out["syncopation"] = _syncopation(seq, win.a, p.steps_per_bar, p.beat)
    out["transitions"] = _transitions(seq)
    out["ioi_mean"], out["ioi_var"], out["ioi_hist"], out["fast_hits"] = _ioi_stats(seq, p.ioi_bins, p.fast_threshold)
    grams = _n_grams(seq, p.ngram_n)
    out["ngram_unique"], out["ngram_entropy"] = len(grams), _entropy(grams)
    out["bar_hits"] = _bar_hits(seq, p.steps_per_bar, p.num_bars)
    out["dense_bar_fraction"] = _fraction_dense_bars(seq, p.steps_per_bar, p.threshold)
    return out


def _swing_ratio(x, pos, on, off, h):
    """(h + δ) / (h - δ), δ = mean x where off minus mean x where on, clipped to ±0.9 h; 1 if undefined."""
    if not h or not (pos == on).any() or not (pos == off).any():
        return 1.0
    delta = np.clip(x[pos == off].mean() - x[pos == on].mean(), -0.9 * h, 0.9 * h)
    return (h + delta) / (h - delta)


def playing_window(win: Window) -> dict:
    """The playing family (kernels/playing.py, velocity and timing) of one window."""
    h, v, x, p = win.seq, win.velocity, win.x, win.p
    D, spb, beat = h.shape[1], p.steps_per_bar, p.beat
    out = {"vel_mean": np.zeros(D), "vel_std": np.zeros(D), "offset_mean": np.zeros(D), "accent": np.zeros(p.positions),
           "timing_spread": 0.0}
    for d in range(D):
        if h[:, d].any():
            out["vel_mean"][d], out["vel_std"][d] = v[h[:, d], d].mean(), v[h[:, d], d].std()
            out["offset_mean"][d] = x[h[:, d], d].mean()
    t, d = np.nonzero(h)                      # every hit: its step and drum
    pos = (win.a + t) % spb
    if len(t):
        out["timing_spread"] = x[t, d].std()
    for q in range(min(p.positions, spb)):
        if (pos == q).any():
            out["accent"][q] = v[t, d][pos == q].mean()
    xs = x[t, d]
    half, quarter = (beat / 2 if beat % 2 == 0 else 0), (beat / 4 if beat % 4 == 0 else 0)
    in_beat = pos % beat
    out["swing_8"] = _swing_ratio(xs, in_beat, 0, half, half)
    out["swing_16"] = _swing_ratio(xs, pos % (beat // 2) if quarter else in_beat, 0, quarter, quarter)
    return out


def _windows(families, hits, velocity, offset, *, seq_len, stride, max_windows=None, **options):
    """Every metric of the named families of every window, one window at a time through TWINS."""
    starts, L = window_grid(len(hits), seq_len, stride)
    starts = starts[:max_windows]
    p = SimpleNamespace(**options)
    out = empty_window_outputs(len(starts), families,
                               {"drums": hits.shape[1], "bars": p.num_bars, "ioi_bins": p.ioi_bins,
                                "positions": p.positions})
    for w, a in enumerate(starts):
        win = Window(hits[a:a + L].astype(bool), int(a), p,
                     None if velocity is None else velocity[a:a + L].astype(np.float64),
                     None if offset is None else offset[a:a + L] / 128.0)
        for family in families:
            values = TWINS[family](win)
            if values.keys() != set(FAMILIES[family].names):     # a declared metric without a twin
                raise KeyError(f"twin of family {family!r} returns {sorted(values)}, "
                               f"the family declares {sorted(FAMILIES[family].names)}")
            for name, value in values.items():
                out[name][w] = value
    return out


def _options(roll, seq_len, steps_per_bar, beats_per_bar, ngram_n, fast_threshold, dense_threshold, num_bars,
             ioi_bins, bars_per_phrase):
    hits = check_roll(roll)
    beat = check_beat(steps_per_bar, beats_per_bar)
    check_positive(ngram_n=ngram_n, bars_per_phrase=bars_per_phrase)
    check_bar_capacity(steps_per_bar, hits.shape[1])
    return hits, dict(steps_per_bar=steps_per_bar, beat=beat, ngram_n=ngram_n, fast_threshold=fast_threshold,
                      threshold=default_dense_threshold(hits.shape[1], dense_threshold),
                      num_bars=seq_len // steps_per_bar if num_bars is None else num_bars,
                      ioi_bins=steps_per_bar if ioi_bins is None else ioi_bins, bars_per_phrase=bars_per_phrase)


def window_metrics(roll, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4, ngram_n=4,
                   fast_threshold=4, dense_threshold=None, num_bars=None, ioi_bins=None,
                   bars_per_phrase=4, max_windows=None) -> dict[str, np.ndarray]:
    """Every window metric of the hits of every window; `max_windows` keeps only the first ones (benchmark)."""
    hits, opts = _options(roll, seq_len, steps_per_bar, beats_per_bar, ngram_n, fast_threshold, dense_threshold,
                          num_bars, ioi_bins, bars_per_phrase)
    return _windows(HIT_FAMILIES, hits, None, None, seq_len=seq_len, stride=stride, max_windows=max_windows,
                    positions=steps_per_bar, **opts)


def expressive_metrics(hits, velocity, offset, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4,
                       positions=None) -> dict[str, np.ndarray]:
    """Velocity and timing metrics of every window, straight from the definitions (kernels/playing.py)."""
    hits, velocity, offset = check_expressive(hits, velocity, offset)
    beat = check_beat(steps_per_bar, beats_per_bar)
    return _windows(PLAYED_FAMILIES, hits, velocity, offset, seq_len=seq_len, stride=stride,
                    steps_per_bar=steps_per_bar, beat=beat,
                    positions=steps_per_bar if positions is None else positions, num_bars=0, ioi_bins=0)


def all_window_metrics(hits, velocity, offset, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4, ngram_n=4,
                       fast_threshold=4, dense_threshold=None, num_bars=None, ioi_bins=None, positions=None,
                       bars_per_phrase=4) -> dict[str, np.ndarray]:
    """Every registered window metric, as kernels.all_window_metrics."""
    roll, opts = _options(hits, seq_len, steps_per_bar, beats_per_bar, ngram_n, fast_threshold, dense_threshold,
                          num_bars, ioi_bins, bars_per_phrase)
    _, velocity, offset = check_expressive(hits, velocity, offset)
    return _windows(tuple(FAMILIES), roll, velocity, offset, seq_len=seq_len, stride=stride,
                    positions=steps_per_bar if positions is None else positions, **opts)


# --- whole songs, sections, bar/phrase aggregates ---------------------------------------------

def _step_entropy(seq):
    return _entropy(Counter(row.tobytes() for row in seq))


def song_metrics(roll, *, steps_per_bar=16, bars_per_phrase=4, ngram_n=4) -> dict[str, np.ndarray]:
    hits = check_roll(roll).astype(bool)
    T, D = hits.shape
    check_positive(steps_per_bar=steps_per_bar, bars_per_phrase=bars_per_phrase, ngram_n=ngram_n)
    out = {name: np.zeros(shape(D), dtype) for name, (dtype, shape) in SONG_SCHEMA.items()}
    if T == 0:
        return out
    out["avg_hits"][...], out["max_hits"][...], out["drum_density"][...] = _hit_density(hits)
    out["step_entropy"][...] = _step_entropy(hits)
    P = steps_per_bar * bars_per_phrase
    phrases = [hits[k * P:(k + 1) * P] for k in range(T // P)]
    out["phrase_entropy"][...] = np.mean([_step_entropy(p) for p in phrases]) if phrases else 0.0
    out["ngram_diversity"][...] = len(_n_grams(hits, ngram_n))
    return out


def section_metrics(roll, sections=None, *, steps_per_bar=16, bars_per_phrase=4,
                    dense_threshold=None) -> dict[str, np.ndarray]:
    hits = check_roll(roll).astype(bool)
    T, D = hits.shape
    check_positive(steps_per_bar=steps_per_bar, bars_per_phrase=bars_per_phrase)
    sec = check_sections(sections, T, steps_per_bar * bars_per_phrase)
    threshold = default_dense_threshold(D, dense_threshold)
    out = {name: np.zeros((len(sec), *shape(D)), dtype) for name, (dtype, shape) in SECTION_SCHEMA.items()}
    for k, (s, e) in enumerate(sec):
        seq = hits[s:e]
        out["avg_hits"][k], out["max_hits"][k], out["drum_density"][k] = _hit_density(seq)
        out["dense_frac"][k] = _fraction_dense_bars(seq, steps_per_bar, threshold)
    return out


def _aggregate(seq, step_size):
    num_units = seq.shape[0] // step_size
    return seq[:num_units * step_size].reshape(num_units, step_size, seq.shape[1]).mean(axis=1)


def bar_means(roll, *, steps_per_bar=16) -> np.ndarray:
    return _aggregate(check_roll(roll).astype(np.float64), steps_per_bar).astype(np.float32)


def phrase_means(roll, *, steps_per_bar=16, bars_per_phrase=4) -> np.ndarray:
    return _aggregate(check_roll(roll).astype(np.float64),
                      steps_per_bar * bars_per_phrase).astype(np.float32)


# --- structure of a window's bars (kernels/structure.py holds the formulas and references) ----

def _bar_pair(x, y):
    """(Hamming distance, union) of two bars' hit cells, bool [spb, D] each."""
    return int((x ^ y).sum()), int((x | y).sum())


def _bar_similarity(x, y):
    """1 − Hamming / union; two silent bars are the same bar (1)."""
    ham, union = _bar_pair(x, y)
    return 1.0 if union == 0 else 1.0 - ham / union


def _change(x, y):
    """1 − similarity as an exact fraction (Hamming / union; 0 for two silent bars)."""
    ham, union = _bar_pair(x, y)
    return Fraction(ham, union) if union else Fraction(0)


def _fills(bars, first_bar, bars_per_phrase):
    """Per complete phrase with a changing bar: [(position in phrase, 1/ties)] of its fill bar(s)."""
    placed = []
    nb = len(bars)
    for k0 in range(nb):
        if (first_bar + k0) % bars_per_phrase or k0 + bars_per_phrase > nb:
            continue                                    # not the first bar of a complete phrase
        change = {k: _change(bars[k - 1], bars[k]) for k in range(max(k0, 1), k0 + bars_per_phrase)}
        if not change or max(change.values()) == 0:
            continue                                    # no bar changes: no fill in this phrase
        top = [k - k0 for k, c in change.items() if c == max(change.values())]
        placed.append([(pos, 1.0 / len(top)) for pos in top])
    return placed


def structure_window(win: Window) -> dict:
    """The structure family (kernels/structure.py) of one window."""
    return structure_metrics(win.seq, win.a, win.p.steps_per_bar, win.p.bars_per_phrase)


def structure_metrics(seq, a, steps_per_bar, bars_per_phrase):
    """STRUCTURE_SCHEMA values of one window `seq` (bool [L, D]) starting at song step a."""
    nb = len(seq) // steps_per_bar
    bars = [seq[k * steps_per_bar:(k + 1) * steps_per_bar] for k in range(nb)]
    out = {}
    for g in STRUCTURE_LAGS:
        sims = [_bar_similarity(bars[k], bars[k + g]) for k in range(nb - g)]
        out[f"bar_sim_lag{g}"] = float(np.mean(sims)) if sims else 0.0
    same = [np.array_equal(bars[k - 1], bars[k]) for k in range(1, nb)]
    out["bar_repeat_rate"] = float(np.mean(same)) if same else 0.0
    placed = _fills(bars, a // steps_per_bar, bars_per_phrase)
    span = max(bars_per_phrase - 1, 1)
    if placed:
        out["fill_position"] = sum(w * pos / span for p in placed for pos, w in p) / len(placed)
        out["fill_at_phrase_end"] = sum(w for p in placed for pos, w in p
                                        if pos == bars_per_phrase - 1) / len(placed)
    else:
        out["fill_position"] = out["fill_at_phrase_end"] = 0.0
    return out


# Each registered family's numpy twin (kernels/families.py): window metrics by name for one Window.
TWINS = {"rhythm": rhythm_window, "structure": structure_window, "playing": playing_window}
