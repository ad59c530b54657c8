"""All windows of one song in one pass: running counts updated as the window slides.

The window [a, a+L) moves one step at a time (step a leaves, step a+L enters) and a row is
written whenever a is a multiple of the stride. Sums that a window can read in O(1) come from
prefix sums; what cannot (transitions, IOIs, n-gram counts, max_hits) is kept as running
state. Total cost O(T * D^2) per song, independent of seq_len except for writing bar_hits.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.codes import ngram_ids
from kernels.spec import (STRUCTURE_SCHEMA, check_bar_capacity, check_beat, check_positive, check_roll,
                          default_dense_threshold, empty_window_outputs, window_grid)
from kernels.structure import structure_metrics


def entropy_table(num: int) -> tuple[np.ndarray, int]:
    """Fixed-point c*log2(c) for c = 0..num, scaled by 2**bits.

    Running entropy sums are integers, so adding and removing n-grams never drifts: a window's
    sum equals the direct sum of its rounded terms, whatever the history (error <= 2**-bits).
    """
    c = np.arange(num + 1, dtype=np.float64)
    clogc = np.where(c > 1, c * np.log2(np.maximum(c, 1)), 0.0)
    bits = int(min(40, 61 - math.ceil(math.log2(clogc[-1] + 2))))
    return np.rint(clogc * 2.0 ** bits).astype(np.int64), bits


@njit(cache=True, nogil=True)
def _prefix_sums(hits, steps_per_bar, beat, dense_threshold):
    T, D = hits.shape
    P_h = np.zeros(T + 1, np.int64)          # hits
    P_d = np.zeros((T + 1, D), np.int32)     # hits per drum (a song has < 2**31 steps)
    P_co = np.zeros(T + 1, np.int64)         # steps with >= 2 drums
    P_sy = np.zeros(T + 1, np.int64)         # hits off the beat
    h = np.zeros(T, np.int64)
    for t in range(T):
        n = 0
        for d in range(D):
            n += hits[t, d]
            P_d[t + 1, d] = P_d[t, d] + hits[t, d]
        h[t] = n
        P_h[t + 1] = P_h[t] + n
        P_co[t + 1] = P_co[t] + (1 if n >= 2 else 0)
        weak = ((t % steps_per_bar) % beat) != 0
        P_sy[t + 1] = P_sy[t] + (n if weak else 0)
    # Q[p] = sum of dense(chunk at p - k*spb), k >= 0: a window's dense-bar count in O(1).
    Q = np.zeros(max(T - steps_per_bar + 1, 0), np.int64)
    in_chunk = np.zeros(D, np.int64)
    distinct = 0
    for t in range(T):
        for d in range(D):
            if hits[t, d]:
                if in_chunk[d] == 0:
                    distinct += 1
                in_chunk[d] += 1
        p = t - steps_per_bar + 1             # chunk [p, t] is complete
        if p >= 0:
            Q[p] = (1 if distinct > dense_threshold else 0) + (Q[p - steps_per_bar] if p >= steps_per_bar else 0)
            for d in range(D):
                if hits[p, d]:
                    in_chunk[d] -= 1
                    if in_chunk[d] == 0:
                        distinct -= 1
    return h, P_h, P_d, P_co, P_sy, Q


@njit(cache=True, nogil=True)
def _next_onsets(hits):
    T, D = hits.shape
    nxt = np.empty((T, D), np.int32)
    last = np.full(D, T, np.int32)
    for t in range(T - 1, -1, -1):
        for d in range(D):
            nxt[t, d] = last[d]
            if hits[t, d]:
                last[d] = t
    return nxt


@njit(cache=True, nogil=True)
def _ioi_update(x, d, sign, n_int, s1, s2, hist, fast, fast_threshold):
    n_int[d] += sign
    s1[d] += sign * x
    s2[d] += sign * x * x
    nb = hist.shape[0]
    hist[min(x, nb) - 1] += sign
    if x <= fast_threshold:
        fast[0] += sign


@njit(cache=True, nogil=True)
def _gram_update(g, sign, counts, table, state):
    # state = [unique n-grams, fixed-point sum of c*log2(c)]
    c = counts[g]
    state[1] -= table[c]
    c += sign
    counts[g] = c
    state[1] += table[c]
    if sign > 0 and c == 1:
        state[0] += 1
    elif sign < 0 and c == 0:
        state[0] -= 1


@njit(cache=True, nogil=True)
def _run(hits, L, stride, steps_per_bar, beat, n, fast_threshold, dense_threshold,
         grams, num_grams, table, bits,
         avg_hits, max_hits, drum_density, co_occurrence, syncopation, transitions,
         ioi_mean, ioi_var, ioi_hist, fast_hits, ngram_unique, ngram_entropy,
         bar_hits, dense_bar_fraction):
    """Slide one window over one song and fill row w of every output for each start a = w * stride.

    Parameters
    ----------
    hits : uint8 [T, D]
        The song's 0/1 roll (`spec.check_roll`).
    L : int
        Window length in steps (seq_len, or T for a song shorter than seq_len: `spec.window_grid`).
    stride : int
        Steps between window starts; row w is the window [w * stride, w * stride + L).
    steps_per_bar : int
        Bar length in steps (bar_hits, dense bars).
    beat : int
        Steps per beat; a hit at a step that is not a multiple of `beat` within its bar is syncopated.
    n : int
        n-gram length (ngram_unique, ngram_entropy).
    fast_threshold : int
        An inter-onset interval of at most this many steps counts as a fast hit.
    dense_threshold : float
        A bar is dense when more than this many distinct drums are hit in it.
    grams : int64 [T - n + 1]
        Id of the n-gram starting at each step (`codes.ngram_ids`), dense in [0, num_grams).
    num_grams : int
        Number of distinct n-gram ids (size of the running count table).
    table : int64 [L - n + 2]
        Fixed-point c * log2(c) for every count c (`entropy_table`), so running entropy sums are exact.
    bits : int
        Fixed-point scale of `table` (values are multiplied by 2**bits).

    Returns
    -------
    None. The remaining arguments are the outputs, preallocated by `spec.empty_window_outputs` in
    `spec.WINDOW_SCHEMA` order ([W, ...] each, W = number of windows) and filled in place:
    avg_hits, max_hits, drum_density, co_occurrence, syncopation, transitions, ioi_mean, ioi_var,
    ioi_hist, fast_hits, ngram_unique, ngram_entropy, bar_hits, dense_bar_fraction. Definitions:
    docs/metrics.md and the numpy twin `kernels.reference.window_metrics`.
    """
    T, D = hits.shape
    W = avg_hits.shape[0]
    h, P_h, P_d, P_co, P_sy, Q = _prefix_sums(hits, steps_per_bar, beat, dense_threshold)
    nxt = _next_onsets(hits)
    trans = np.zeros((D, D), np.int64)
    h_count = np.zeros(D + 1, np.int64)
    last = np.full(D, -1, np.int64)                  # last onset of each drum among added steps
    n_int = np.zeros(D, np.int64)
    s1 = np.zeros(D, np.int64)
    s2 = np.zeros(D, np.int64)
    hist = np.zeros(ioi_hist.shape[1], np.int64)
    fast = np.zeros(1, np.int64)
    counts = np.zeros(num_grams, np.int64)
    gstate = np.zeros(2, np.int64)
    N = L - n + 1                                    # n-grams per window
    scale = 2.0 ** bits
    nb_out = bar_hits.shape[1]
    nb = L // steps_per_bar
    a = 0
    for t in range(T):
        if t >= L:                                   # step a = t - L leaves [a, t)
            a = t - L
            h_count[h[a]] -= 1
            for d in range(D):
                if hits[a, d]:
                    if nxt[a, d] < t:                # its interval to the next onset was inside
                        _ioi_update(nxt[a, d] - a, d, -1, n_int, s1, s2, hist, fast, fast_threshold)
                    if L >= 2:                       # the pair (a, a+1) was inside
                        for j in range(D):
                            if hits[a + 1, j]:
                                trans[d, j] -= 1
            if N > 0:
                _gram_update(grams[a], -1, counts, table, gstate)
            a += 1
        # step t enters the window [a, t]
        h_count[h[t]] += 1
        for d in range(D):
            if hits[t, d]:
                if last[d] >= a:
                    _ioi_update(t - last[d], d, 1, n_int, s1, s2, hist, fast, fast_threshold)
                last[d] = t
                if t > a:
                    for i in range(D):
                        if hits[t - 1, i]:
                            trans[i, d] += 1
        if N > 0 and t - n + 1 >= a:
            _gram_update(grams[t - n + 1], 1, counts, table, gstate)
        if t - a + 1 < L or a % stride != 0:
            continue
        w = a // stride
        if w >= W:
            break
        e = a + L
        H = P_h[e] - P_h[a]
        avg_hits[w] = H / L
        m = D
        while h_count[m] == 0:
            m -= 1
        max_hits[w] = m
        co_occurrence[w] = (P_co[e] - P_co[a]) / L
        syncopation[w] = (P_sy[e] - P_sy[a]) / H if H > 0 else 0.0
        for i in range(D):
            drum_density[w, i] = (P_d[e, i] - P_d[a, i]) / L
            den = P_d[e - 1, i] - P_d[a, i]
            if den > 0:                              # rows of a drum never hit stay 0
                inv = 1.0 / den
                for j in range(D):
                    transitions[w, i, j] = trans[i, j] * inv
            if n_int[i] > 0:
                k = n_int[i]
                ioi_mean[w, i] = s1[i] / k
                ioi_var[w, i] = (k * s2[i] - s1[i] * s1[i]) / (k * k)   # exact integer numerator
            else:
                ioi_mean[w, i] = 0.0
                ioi_var[w, i] = 0.0
        for b in range(hist.shape[0]):
            ioi_hist[w, b] = hist[b]
        fast_hits[w] = fast[0]
        if N > 0:
            ngram_unique[w] = gstate[0]
            ngram_entropy[w] = max(math.log2(N) - gstate[1] / scale / N, 0.0)
        for k in range(nb_out):
            bar_hits[w, k] = P_h[a + (k + 1) * steps_per_bar] - P_h[a + k * steps_per_bar] if k < nb else 0
        if nb > 0:
            last_chunk = a + (nb - 1) * steps_per_bar
            dense = Q[last_chunk] - (Q[a - steps_per_bar] if a >= steps_per_bar else 0)
            dense_bar_fraction[w] = dense / nb


def window_metrics(roll, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4, ngram_n=4,
                   fast_threshold=4, dense_threshold=None, num_bars=None, ioi_bins=None,
                   bars_per_phrase=4) -> dict[str, np.ndarray]:
    """Every window metric (docs/metrics.md) of every window of one song, as [W, ...] arrays.

    num_bars (default seq_len // steps_per_bar) and ioi_bins (default steps_per_bar) fix the
    widths of bar_hits and ioi_hist, so songs in other meters can share one table;
    bars_per_phrase places the fills (kernels/structure.py).
    """
    hits = check_roll(roll)
    T, D = hits.shape
    beat = check_beat(steps_per_bar, beats_per_bar)
    check_positive(ngram_n=ngram_n, bars_per_phrase=bars_per_phrase)
    check_bar_capacity(steps_per_bar, D)
    num_bars = seq_len // steps_per_bar if num_bars is None else int(num_bars)
    ioi_bins = steps_per_bar if ioi_bins is None else int(ioi_bins)
    check_positive(ioi_bins=ioi_bins)
    starts, L = window_grid(T, seq_len, stride)
    out = empty_window_outputs(len(starts), D, num_bars, ioi_bins)
    if len(starts) == 0:
        return out
    grams, num_grams = ngram_ids(hits, ngram_n)
    table, bits = entropy_table(max(L - ngram_n + 1, 1))
    _run(hits, L, int(stride), int(steps_per_bar), int(beat), int(ngram_n), int(fast_threshold),
         default_dense_threshold(D, dense_threshold), grams, num_grams, table, bits,
         *(out[name] for name in out if name not in STRUCTURE_SCHEMA))
    structure_metrics(hits, starts, L, steps_per_bar, bars_per_phrase, out)
    return out
