"""The rhythm family: density, transitions, inter-onset intervals, n-grams and bars of every window.

All windows of one song in one pass: the window [a, a+L) moves one step at a time (step a leaves,
step a+L enters) and a row is written whenever a is a multiple of the stride. Sums that a window
can read in O(1) come from prefix sums; what cannot (transitions, IOIs, n-gram counts, max_hits)
is kept as running state. Total cost O(T * D^2) per song, independent of seq_len except for
writing bar_hits. Definitions: docs/metrics.md; numpy twin: `kernels.reference` (rhythm_window).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.codes import ngram_ids
from kernels.schema import Family, Metric, SongWindows, outputs_type

# Fractions are float32 (one row per window of every song adds up), counts int32; bar_hits, the
# one table that grows with seq_len, is uint16 (a bar holds at most spb * D <= 65535 hits).
METRICS = (
    Metric("avg_hits", "float32", (), "mean drums hit per step, H / L"),
    Metric("max_hits", "int32", (), "most drums hit at one step"),
    Metric("drum_density", "float32", ("drums",), "share of steps on which drum d is hit"),
    Metric("co_occurrence", "float32", (), "share of steps with at least two drums"),
    Metric("syncopation", "float32", (), "share of hits off the beat grid (absolute phase)"),
    Metric("transitions", "float32", ("drums", "drums"), "P(j at t+1 | i at t)"),
    Metric("ioi_mean", "float32", ("drums",), "mean inter-onset interval of drum d"),
    Metric("ioi_var", "float32", ("drums",), "population variance of those intervals"),
    Metric("ioi_hist", "int32", ("ioi_bins",), "intervals of all drums: bin i = interval i+1, last = the rest"),
    Metric("fast_hits", "int32", (), "intervals <= fast_threshold"),
    Metric("ngram_unique", "int32", (), "distinct n-grams of step patterns"),
    Metric("ngram_entropy", "float32", (), "entropy in bits of the n-gram counts"),
    Metric("bar_hits", "uint16", ("bars",), "hits per bar-long chunk from the window start"),
    Metric("dense_bar_fraction", "float32", (), "share of chunks with more than dense_threshold drums"),
)
RhythmOutputs = outputs_type("RhythmOutputs", METRICS, __name__)


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
    return h, P_h, P_d, P_co, P_sy, _dense_chunks(hits, steps_per_bar, dense_threshold)


@njit(cache=True, nogil=True)
def _dense_chunks(hits, steps_per_bar, dense_threshold):
    """Q[p] = sum of dense(chunk at p - k*spb), k >= 0: a window's dense-bar count in O(1)."""
    T, D = hits.shape
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
    return Q


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


@njit(cache=True, nogil=True, inline="always")
def _leave(hits, a, t, L, nxt, trans, n_int, s1, s2, hist, fast, fast_threshold):
    """Step a = t - L leaves the window [a, t): its interval to the next onset and its pairs (a, a+1)."""
    D = hits.shape[1]
    for d in range(D):
        if hits[a, d]:
            if nxt[a, d] < t:                # its interval to the next onset was inside
                _ioi_update(nxt[a, d] - a, d, -1, n_int, s1, s2, hist, fast, fast_threshold)
            if L >= 2:                       # the pair (a, a+1) was inside
                for j in range(D):
                    if hits[a + 1, j]:
                        trans[d, j] -= 1


@njit(cache=True, nogil=True, inline="always")
def _enter(hits, a, t, last, trans, n_int, s1, s2, hist, fast, fast_threshold):
    """Step t enters the window [a, t]: its interval from the previous onset and its pairs (t-1, t)."""
    D = hits.shape[1]
    for d in range(D):
        if hits[t, d]:
            if last[d] >= a:
                _ioi_update(t - last[d], d, 1, n_int, s1, s2, hist, fast, fast_threshold)
            last[d] = t
            if t > a:
                for i in range(D):
                    if hits[t - 1, i]:
                        trans[i, d] += 1


@njit(cache=True, nogil=True)
def _run(hits, L, stride, steps_per_bar, beat, n, fast_threshold, dense_threshold,
         grams, num_grams, table, bits, out):
    """Slide one window over one song and fill row w of every output for each start a = w * stride.

    hits uint8 [T, D] 0/1; L the window length; n the n-gram length; grams int64 [T - n + 1] the
    id of the n-gram at each step (`codes.ngram_ids`, dense in [0, num_grams)); table / bits the
    fixed-point c * log2(c) (`entropy_table`), so running entropy sums are exact. `out` is a
    RhythmOutputs of [W, ...] arrays, filled in place.
    """
    T, D = hits.shape
    # the outputs by name, bound once (reading them off the namedtuple inside the loop is ~30% slower)
    avg_hits, max_hits, drum_density, co_occurrence = out.avg_hits, out.max_hits, out.drum_density, out.co_occurrence
    syncopation, transitions, ioi_mean, ioi_var = out.syncopation, out.transitions, out.ioi_mean, out.ioi_var
    ioi_hist, fast_hits, ngram_unique, ngram_entropy = out.ioi_hist, out.fast_hits, out.ngram_unique, out.ngram_entropy
    bar_hits, dense_bar_fraction = out.bar_hits, out.dense_bar_fraction
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
    a = 0
    for t in range(T):
        if t >= L:                                   # step a = t - L leaves [a, t)
            a = t - L
            h_count[h[a]] -= 1
            _leave(hits, a, t, L, nxt, trans, n_int, s1, s2, hist, fast, fast_threshold)
            if N > 0:
                _gram_update(grams[a], -1, counts, table, gstate)
            a += 1
        h_count[h[t]] += 1                           # step t enters the window [a, t]
        _enter(hits, a, t, last, trans, n_int, s1, s2, hist, fast, fast_threshold)
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
        nb = L // steps_per_bar
        for k in range(bar_hits.shape[1]):
            bar_hits[w, k] = P_h[a + (k + 1) * steps_per_bar] - P_h[a + k * steps_per_bar] if k < nb else 0
        if nb > 0:
            last_chunk = a + (nb - 1) * steps_per_bar
            dense = Q[last_chunk] - (Q[a - steps_per_bar] if a >= steps_per_bar else 0)
            dense_bar_fraction[w] = dense / nb


def fill(song: SongWindows, out: RhythmOutputs) -> None:
    grams, num_grams = ngram_ids(song.hits, song.ngram_n)
    table, bits = entropy_table(max(song.L - song.ngram_n + 1, 1))
    _run(song.hits, song.L, song.stride, song.steps_per_bar, song.beat, song.ngram_n, song.fast_threshold,
         song.dense_threshold, grams, num_grams, table, bits, out)


FAMILY = Family("rhythm", "density, transitions, inter-onset intervals, n-grams and bars of the hits",
                METRICS, ("hits",), fill, RhythmOutputs)
