"""Structure of a window's bars: how a groove repeats, and where its fills fall.

A window [a, a+L) holds nb = L // spb complete bars B_0..B_{nb−1} (bar k = steps a+k·spb ..
a+(k+1)·spb−1, counted from the window's start, whatever stride put it there). A bar is
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

How (per song, not per window): the Hamming distance and union of two bars are sums over their
steps, so per lag g the cells that differ / are hit between step t and t + g·spb are prefix-summed
once, O(T·D), and every bar pair at any step offset is a difference of two entries. A window's pairs
are those at a, a + spb, ...: running sums along that stride (chains) give their total in O(1); so do
the repeats, and the fills per phrase start (stride bpp·spb), with the window's first phrase, whose
first bar has no predecessor inside the window, computed on its own. Similarities are summed in fixed
point (2**-46 per term), fill positions in exact whole units, so no sum drifts along the song. The
stored values are float32 and must equal what the bar-by-bar sum of the definition gives: a window
whose value lies so close to a float32 rounding boundary that the two sums' rounding errors could put
them on either side (about one in 10^6) is summed bar by bar instead (`_window_direct`); tests check
the two paths bit for bit. Cost: O(T·D) per song + O(1) per window, whatever seq_len.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from kernels.schema import Family, Metric, SongWindows, outputs_type

LAGS = (1, 2, 4)    # bar_sim_lag{g}; lag 1 (the first) also gives the repeats and the changes
METRICS = (
    *(Metric(f"bar_sim_lag{g}", "float32", (), f"mean similarity of bars {g} apart") for g in LAGS),
    Metric("bar_repeat_rate", "float32", (), "share of bars equal to the bar before"),
    Metric("fill_position", "float32", (), "mean position of the phrases' fills, 0 first bar .. 1 last"),
    Metric("fill_at_phrase_end", "float32", (), "share of fills on the phrase's last bar"),
)
StructureOutputs = outputs_type("StructureOutputs", METRICS, __name__)
# Per song: X[i, s] / U[i, s] = prefix sums over steps of the cells that differ / are hit in either,
# between step t and step t + LAGS[i]·spb, so bar pair (s, s + g·spb) = X[i, s+spb] − X[i, s]. Chains
# (sums over s, s − stride, s − 2·stride, ...; a window's sum = the difference of two entries):
# S[i, s] similarities of the pairs at lag LAGS[i] in fixed point (2**-bits), E[i, s] how many of
# them were rounded, R[s] exact repeats (stride spb); fills per phrase start p, stride bpp·spb: C[p]
# phrases with a fill, P[p] their positions in units of 1 / (span·lc), N[p] fills on the last bar in
# units of 1 / lc (lc = lcm(1..bpp): a phrase's ties share it in whole units).
Bars = namedtuple("Bars", ["X", "U", "S", "E", "R", "C", "P", "N", "spb", "bpp", "bits", "span", "lc"],
                  module=__name__)


@njit(cache=True, nogil=True)
def _step_pairs(hits, shift):
    """Prefix sums over t of the cells that differ (X) / are hit (U) at t or t + shift (0 past the song)."""
    T, D = hits.shape
    X = np.zeros(T + 1, np.int64)
    U = np.zeros(T + 1, np.int64)
    for t in range(T):
        x = 0
        u = 0
        if t + shift < T:
            for d in range(D):
                p = hits[t, d]
                q = hits[t + shift, d]
                x += p ^ q                        # hits are 0/1
                u += p | q
        X[t + 1] = X[t] + x
        U[t + 1] = U[t] + u
    return X, U


@njit(cache=True, nogil=True)
def _pair(b, i, s):
    """(Hamming distance, union) of the bars at s and s + LAGS[i]·spb."""
    return b.X[i, s + b.spb] - b.X[i, s], b.U[i, s + b.spb] - b.U[i, s]


@njit(cache=True, nogil=True)
def _sim_chains(b, i, pairs):
    """S[i], E[i] over the first `pairs` pair starts: fixed-point sim (rounded half up) and whether it was rounded."""
    spb, bits = b.spb, b.bits
    for s in range(pairs):
        ham, union = _pair(b, i, s)
        if union == 0:
            term, rounded = np.int64(1) << bits, 0      # two silent bars are the same bar
        else:
            r = (union - ham) << bits
            term, rounded = (2 * r + union) // (2 * union), 1 if r % union else 0
        b.S[i, s] = term + (b.S[i, s - spb] if s >= spb else 0)
        b.E[i, s] = rounded + (b.E[i, s - spb] if s >= spb else 0)
        if i == 0:
            b.R[s] = (1 if ham == 0 else 0) + (b.R[s - spb] if s >= spb else 0)


@njit(cache=True, nogil=True)
def _phrase(b, p, first_in_window):
    """(1 if the phrase of bars p, p+spb, ... has a fill else 0, positions in 1/(span·lc), last-bar fills in 1/lc).
    first_in_window: its first bar has no predecessor in the window, so its change does not count."""
    spb, bpp = b.spb, b.bpp
    lo = 1 if first_in_window else 0
    best, bh, bu = -1, 0, 0
    for i in range(lo, bpp):                        # the largest change ham/union, compared exactly
        ham, union = _pair(b, 0, p + (i - 1) * spb)
        if union > 0 and ham > 0 and (best < 0 or ham * bu > bh * union):
            best, bh, bu = i, ham, union
    if best < 0:
        return 0, 0, 0
    ties, pos, end = 0, 0, 0
    for i in range(lo, bpp):
        ham, union = _pair(b, 0, p + (i - 1) * spb)
        if union > 0 and ham * bu == bh * union:
            ties += 1
            pos += i
            end += 1 if i == bpp - 1 else 0
    return 1, pos * (b.lc // ties), end * (b.lc // ties)


@njit(cache=True, nogil=True)
def _fill_chains(b, T):
    """C, P, N over every phrase start p that has a bar before it and fits in the song."""
    stride = b.bpp * b.spb
    for p in range(T - stride + 1):
        c, pos, end = 0, 0, 0
        if p >= b.spb:
            c, pos, end = _phrase(b, p, False)
        prev = p - stride
        b.C[p] = c + (b.C[prev] if prev >= 0 else 0)
        b.P[p] = pos + (b.P[prev] if prev >= 0 else 0)
        b.N[p] = end + (b.N[prev] if prev >= 0 else 0)


@njit(cache=True, nogil=True)
def _chain_sum(chain, last, stride, count):
    """Sum of the `count` chain entries last, last − stride, ... (chain holds running sums)."""
    before = last - count * stride
    return chain[last] - (chain[before] if before >= 0 else 0)


@njit(cache=True, nogil=True)
def _f32_safe(v, margin):
    """Whether every value within margin of v rounds to the same float32 as v (the stored dtype)."""
    return np.float32(v - margin) == np.float32(v + margin)


@njit(cache=True, nogil=True)
def _window_sums(b, lags, a, nb, w, sims, repeat, fill_pos, fill_end):
    """Window w = [a, a + nb bars) from the chains in O(1) (plus one phrase); False when a value's
    float32 could differ from the direct sum's (the caller then computes the window directly)."""
    spb, bpp = b.spb, b.bpp
    for i in range(lags.shape[0]):
        m = nb - lags[i]                                   # pairs in the window
        if m <= 0:
            sims[i, w] = 0.0
            continue
        last = a + (m - 1) * spb
        total = _chain_sum(b.S[i], last, spb, m)
        v = total * 2.0 ** -b.bits / m
        # exact terms: the direct float sum is exact too (m < 128 keeps its partial sums in 53 bits)
        exact = _chain_sum(b.E[i], last, spb, m) == 0 and m < 128
        if not exact and not _f32_safe(v, (m + 16) * 2.0 ** -52 + 2.0 ** (1 - b.bits)):
            return False
        sims[i, w] = v
    repeat[w] = _chain_sum(b.R, a + (nb - 2) * spb, spb, nb - 1) / (nb - 1) if nb > 1 else 0.0
    count, pos, end = 0, 0, 0
    k0 = (-(a // spb)) % bpp                               # the window's first bar that starts a phrase
    if k0 == 0:
        if bpp <= nb:                                      # its first bar has no predecessor in the window
            count, pos, end = _phrase(b, a, True)
        k0 = bpp
    phrases = (nb - bpp - k0) // bpp + 1 if k0 <= nb - bpp else 0
    if phrases > 0:
        last = a + (k0 + (phrases - 1) * bpp) * spb
        count += _chain_sum(b.C, last, bpp * spb, phrases)
        pos += _chain_sum(b.P, last, bpp * spb, phrases)
        end += _chain_sum(b.N, last, bpp * spb, phrases)
    if count == 0:
        fill_pos[w] = fill_end[w] = 0.0
        return True
    margin = (count + bpp * bpp + 16) * 2.0 ** -51
    vp, ve = pos / (b.span * b.lc * count), end / (b.lc * count)
    if (pos and not _f32_safe(vp, margin)) or (end and not _f32_safe(ve, margin)):
        return False
    fill_pos[w], fill_end[w] = vp, ve
    return True


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
def _window_direct(b, lags, a, nb, w, sims, repeat, fill_pos, fill_end, ham, union, acc):
    """Window w summed bar by bar, in the order the definition reads (the reference for `_window_sums`)."""
    spb, bpp = b.spb, b.bpp
    for li in range(lags.shape[0]):
        g = lags[li]
        total = 0.0
        for k in range(nb - g):
            h, u = _pair(b, li, a + k * spb)
            total += 1.0 if u == 0 else 1.0 - h / u
        sims[li, w] = total / (nb - g) if nb > g else 0.0
    same = 0
    for k in range(1, nb):
        ham[k], union[k] = _pair(b, 0, a + (k - 1) * spb)
        same += 1 if ham[k] == 0 else 0
    repeat[w] = same / (nb - 1) if nb > 1 else 0.0
    acc[:] = 0.0
    first = a // spb
    for k0 in range(nb):
        if (first + k0) % bpp == 0 and k0 + bpp <= nb:
            _phrase_fills(ham, union, k0, bpp, acc)
    fill_pos[w] = acc[1] / acc[0] if acc[0] > 0 else 0.0
    fill_end[w] = acc[2] / acc[0] if acc[0] > 0 else 0.0


@njit(cache=True, nogil=True)
def _bars(hits, spb, bpp, lags, bits, lc):
    """The song's pair prefix sums and chains (Bars), O(T · D) per lag plus O(T · bpp) for the fills."""
    T = hits.shape[0]
    nl = lags.shape[0]
    X = np.zeros((nl, T + 1), np.int64)
    U = np.zeros((nl, T + 1), np.int64)
    for i in range(nl):
        X[i], U[i] = _step_pairs(hits, lags[i] * spb)
    z = np.zeros
    b = Bars(X, U, z((nl, T + 1), np.int64), z((nl, T + 1), np.int64), z(T + 1, np.int64), z(T + 1, np.int64),
             z(T + 1, np.int64), z(T + 1, np.int64), spb, bpp, bits, max(bpp - 1, 1), lc)
    for i in range(nl):
        _sim_chains(b, i, max(T - (lags[i] + 1) * spb + 1, 0))
    _fill_chains(b, T)
    return b


@njit(cache=True, nogil=True)
def structure_run(hits, starts, L, spb, bpp, lags, bits, lc, direct, sims, repeat, fill_pos, fill_end):
    """Fill the structure metrics of every window (rows of `starts`) in place; sims [len(lags), W].
    direct: sum every window bar by bar instead of from the chains (the tests' bit-for-bit check)."""
    b = _bars(hits, spb, bpp, lags, bits, lc)
    nb = L // spb
    ham = np.zeros(max(nb, 1), np.int64)
    union = np.zeros(max(nb, 1), np.int64)
    acc = np.zeros(3)
    for w in range(starts.shape[0]):
        a = starts[w]
        if direct or not _window_sums(b, lags, a, nb, w, sims, repeat, fill_pos, fill_end):
            _window_direct(b, lags, a, nb, w, sims, repeat, fill_pos, fill_end, ham, union, acc)


def _fixed_point(T: int, spb: int, bpp: int) -> tuple[int, int, bool]:
    """(bits, lc, direct): the similarity scale 2**-bits whose song-long sums fit in int64, lcm(1..bpp),
    and whether the fill sums would pass 2**53 (an unusually long phrase: then sum directly)."""
    bits = min(46, 62 - (T // spb + 1).bit_length())
    lc = math.lcm(*range(1, bpp + 1))
    phrases = T // (bpp * spb) + 2
    return bits, lc, bits < 20 or bpp * bpp * lc * phrases >= 2 ** 53 or bpp * lc * phrases >= 2 ** 53


def fill(song: SongWindows, out: StructureOutputs, direct: bool = False) -> None:
    lags = np.asarray(LAGS, np.int64)
    sims = np.zeros((len(lags), len(song.starts)))
    bits, lc, long_phrase = _fixed_point(len(song.hits), song.steps_per_bar, song.bars_per_phrase)
    structure_run(song.hits, song.starts, song.L, song.steps_per_bar, song.bars_per_phrase, lags, bits, lc,
                  direct or long_phrase, sims, out.bar_repeat_rate, out.fill_position, out.fill_at_phrase_end)
    for i, g in enumerate(LAGS):
        getattr(out, f"bar_sim_lag{g}")[:] = sims[i]


FAMILY = Family("structure", "how a window's bars repeat, and where its fills fall", METRICS, ("hits",), fill,
                StructureOutputs)
