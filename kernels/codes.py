"""Exact dense ids for step patterns and n-grams: equal ids <=> equal values, no collisions.

A step pattern is the bitmask of drums hit at a step. `pattern_ids` numbers the distinct
patterns 0..P-1; `ngram_ids` numbers the distinct n-grams (n consecutive patterns) 0..G-1.
The hash table below only speeds up the lookup: it stores and compares the exact keys.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.int64(-7046029254386353131)    # 0x9E3779B97F4A7C15 as int64: Fibonacci hashing


@njit(cache=True, nogil=True)
def densify(codes):
    """(ids, k): ids[i] in 0..k-1 numbers the distinct int64 codes in order of first appearance."""
    n = codes.shape[0]
    bits = 1
    while (1 << bits) < 2 * n + 2:
        bits += 1
    size = 1 << bits
    mask = size - 1
    keys = np.empty(size, np.int64)
    vals = np.full(size, -1, np.int64)
    ids = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        c = codes[i]
        slot = ((c * _GOLDEN) >> (64 - bits)) & mask
        while vals[slot] >= 0 and keys[slot] != c:
            slot = (slot + 1) & mask              # linear probing, exact key compare
        if vals[slot] < 0:
            keys[slot] = c
            vals[slot] = k
            k += 1
        ids[i] = vals[slot]
    return ids, k


@njit(cache=True, nogil=True)
def _bitmasks(hits):
    T, D = hits.shape
    out = np.zeros(T, np.int64)
    for t in range(T):
        m = np.int64(0)
        for d in range(D):
            if hits[t, d]:
                m |= np.int64(1) << d
        out[t] = m
    return out


@njit(cache=True, nogil=True)
def _packed_ngrams(masks, n, D):
    # n * D <= 63 bits: the n-gram itself is the code, exactly.
    G = masks.shape[0] - n + 1
    out = np.empty(G, np.int64)
    for s in range(G):
        c = np.int64(0)
        for k in range(n):
            c |= masks[s + k] << (k * D)
        out[s] = c
    return out


@njit(cache=True, nogil=True)
def _extend(prefix_ids, pattern, offset, num_patterns):
    # (id of the first k patterns, pattern k) -> id of the first k+1 patterns; the pair code
    # id * P + p < T * T fits in int64, so this stays exact for any n and D.
    G = prefix_ids.shape[0]
    codes = np.empty(G, np.int64)
    for s in range(G):
        codes[s] = prefix_ids[s] * num_patterns + pattern[s + offset]
    return densify(codes)


def pattern_ids(hits: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense id of each step's pattern; hits is uint8 [T, D] of 0/1."""
    T, D = hits.shape
    if D <= 62:
        return densify(_bitmasks(hits))
    _, inverse = np.unique(hits, axis=0, return_inverse=True)   # wide kits: exact row compare
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse, int(inverse.max()) + 1 if T else 0


def ngram_ids(hits: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Dense id of the n-gram starting at each step s = 0..T-n (empty when T < n)."""
    T, D = hits.shape
    if T < n:
        return np.zeros(0, np.int64), 0
    if n * D <= 63:
        return densify(_packed_ngrams(_bitmasks(hits), n, D))
    pat, P = pattern_ids(hits)
    ids, k = densify(pat[:T - n + 1].copy())
    for off in range(1, n):
        ids, k = _extend(ids, pat, off, P)
    return ids, k
