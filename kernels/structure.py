"""Structure of a window's bars: how a groove repeats, and where its fills fall.

A window [a, a+L) holds nb = L // spb complete bars B_0..B_{nb−1} (bar k = steps a+k·spb ..
a+(k+1)·spb−1; windows start on bar lines, as the project's window stride is whole bars). A bar is
its set of hit cells (step, drum) on the step grid (steps, not MIDI ticks). For bars X, Y:

    ham(X, Y) = |X ⊕ Y|  (cells hit in one bar only),  union(X, Y) = |X ∪ Y|
    sim(X, Y) = 1 − ham / union,   and sim = 1 when both bars are silent (union = 0: the same bar)

This is the "groove consistency" of Wu & Yang (2020, "The Jazz Transformer on the front line",
ISMIR: 1 − normalised Hamming distance between bars' onset patterns), on the (step, drum) grid
and normalised by the cells either bar uses, not by spb·D: with D = 9 drums two unrelated sparse
bars would otherwise still score ≈ 0.9.

- bar_sim_lag{g}, g = 1, 2, 4: mean over k = 0..nb−1−g of sim(B_k, B_{k+g}); 0 when nb ≤ g.
  A one-bar loop scores 1 at every lag; a two-bar pattern ~1 at lags 2 and 4, lower at lag 1.
- bar_repeat_rate: fraction of k = 1..nb−1 with B_k == B_{k−1} exactly; 0 when nb < 2.
- Fill placement: change_k = 1 − sim(B_{k−1}, B_k) for k ≥ 1. Phrases are bpp bars on the song's
  bar grid (song bar j = a // spb + k is bar j mod bpp of its phrase); in every phrase wholly
  inside the window, its fill is the bar of largest change (its bars k ≥ 1; ties share the phrase
  equally; a phrase with no change has no fill). Over the window's phrases with a fill:
  fill_position = mean of pos / (bpp − 1) (0 = first bar, 1 = last bar of the phrase; pos / 1 when
  bpp = 1), fill_at_phrase_end = fraction of fills on the phrase's last bar. Both 0 without fills.
  Changes are compared exactly (ham·union' vs ham'·union), so the numpy twin agrees bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.schema import Family, Metric, SongWindows, outputs_type

LAGS = (1, 2, 4)    # bar_sim_lag{g}
METRICS = (
    *(Metric(f"bar_sim_lag{g}", "float32", (), f"mean similarity of bars {g} apart") for g in LAGS),
    Metric("bar_repeat_rate", "float32", (), "share of bars equal to the bar before"),
    Metric("fill_position", "float32", (), "mean position of the phrases' fills, 0 first bar .. 1 last"),
    Metric("fill_at_phrase_end", "float32", (), "share of fills on the phrase's last bar"),
)
StructureOutputs = outputs_type("StructureOutputs", METRICS, __name__)


@njit(cache=True, nogil=True)
def _pair(hits, s, u, spb):
    """(Hamming distance, union) of the bars starting at steps s and u."""
    ham = 0
    union = 0
    for i in range(spb):
        for d in range(hits.shape[1]):
            x = hits[s + i, d]
            y = hits[u + i, d]
            if x or y:
                union += 1
                if x != y:
                    ham += 1
    return ham, union


@njit(cache=True, nogil=True)
def _phrase_fills(ham, union, k0, bpp, acc):
    """Add the fill of the phrase of window bars k0..k0+bpp−1 (change of bar k: ham[k]/union[k])
    to acc = [phrases with a fill, Σ positions/(bpp−1), Σ at-end]."""
    best = -1
    for k in range(max(k0, 1), k0 + bpp):           # the largest change, as a fraction
        if union[k] > 0 and ham[k] > 0 and (best < 0 or ham[k] * union[best] > ham[best] * union[k]):
            best = k
    if best < 0:
        return
    ties = 0
    pos = 0.0
    end = 0.0
    span = max(bpp - 1, 1)
    for k in range(max(k0, 1), k0 + bpp):
        if union[k] > 0 and ham[k] * union[best] == ham[best] * union[k]:
            ties += 1
            pos += (k - k0) / span
            end += 1.0 if k - k0 == bpp - 1 else 0.0
    acc[0] += 1.0
    acc[1] += pos / ties
    acc[2] += end / ties


@njit(cache=True, nogil=True)
def structure_run(hits, starts, L, spb, bpp, lags, sims, repeat, fill_pos, fill_end):
    """Fill the structure metrics of every window (rows of `starts`) in place; sims [len(lags)][W]."""
    nb = L // spb
    ham = np.zeros(max(nb, 1), np.int64)
    union = np.zeros(max(nb, 1), np.int64)
    acc = np.zeros(3)
    for w in range(starts.shape[0]):
        a = starts[w]
        for li in range(lags.shape[0]):
            g = lags[li]
            total = 0.0
            for k in range(nb - g):
                h, u = _pair(hits, a + k * spb, a + (k + g) * spb, spb)
                total += 1.0 if u == 0 else 1.0 - h / u
            sims[li, w] = total / (nb - g) if nb > g else 0.0
        same = 0
        for k in range(1, nb):
            ham[k], union[k] = _pair(hits, a + (k - 1) * spb, a + k * spb, spb)
            same += 1 if ham[k] == 0 else 0
        repeat[w] = same / (nb - 1) if nb > 1 else 0.0
        acc[:] = 0.0
        first = a // spb
        for k0 in range(nb):
            if (first + k0) % bpp == 0 and k0 + bpp <= nb:
                _phrase_fills(ham, union, k0, bpp, acc)
        fill_pos[w] = acc[1] / acc[0] if acc[0] > 0 else 0.0
        fill_end[w] = acc[2] / acc[0] if acc[0] > 0 else 0.0


def fill(song: SongWindows, out: StructureOutputs) -> None:
    lags = np.asarray(LAGS, np.int64)
    sims = np.zeros((len(lags), len(song.starts)))
    structure_run(song.hits, song.starts, song.L, song.steps_per_bar, song.bars_per_phrase,
                  lags, sims, out.bar_repeat_rate, out.fill_position, out.fill_at_phrase_end)
    for i, g in enumerate(LAGS):
        getattr(out, f"bar_sim_lag{g}")[:] = sims[i]


FAMILY = Family("structure", "how a window's bars repeat, and where its fills fall", METRICS, ("hits",), fill,
                StructureOutputs)
