"""Per-song, per-section and bar/phrase metrics (numba); formulas in docs/metrics.md."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.codes import ngram_ids, pattern_ids
from kernels.spec import (SECTION_SCHEMA, SONG_SCHEMA, check_positive, check_roll,
                          check_sections, default_dense_threshold)


@njit(cache=True, nogil=True)
def _entropy_of_ids(ids, start, end, counts):
    """Entropy in bits of the id distribution over ids[start:end]; counts is zero and left zero."""
    N = end - start
    if N <= 0:
        return 0.0
    for t in range(start, end):
        counts[ids[t]] += 1
    s = 0.0
    for t in range(start, end):
        c = counts[ids[t]]
        if c > 0:                                   # each distinct id once, then clear it
            p = c / N
            s -= p * math.log2(p)
            counts[ids[t]] = 0
    return s


@njit(cache=True, nogil=True)
def _hit_density(hits, start, end, density):
    """(avg_hits, max_hits) over [start, end) and per-drum density written into `density`."""
    D = hits.shape[1]
    L = end - start
    total, top = 0, 0
    for d in range(D):
        density[d] = 0.0
    for t in range(start, end):
        n = 0
        for d in range(D):
            if hits[t, d]:
                n += 1
                density[d] += 1.0
        total += n
        top = max(top, n)
    for d in range(D):
        density[d] /= L
    return total / L, top


@njit(cache=True, nogil=True)
def _dense_fraction(hits, start, end, steps_per_bar, threshold):
    """Share of complete steps_per_bar chunks from `start` with more than `threshold` drums."""
    D = hits.shape[1]
    nb = (end - start) // steps_per_bar
    if nb == 0:
        return 0.0
    dense = 0
    for k in range(nb):
        s = start + k * steps_per_bar
        distinct = 0
        for d in range(D):
            for t in range(s, s + steps_per_bar):
                if hits[t, d]:
                    distinct += 1
                    break
        if distinct > threshold:
            dense += 1
    return dense / nb


@njit(cache=True, nogil=True)
def _song(hits, pats, num_pats, phrase_len, density):
    T = hits.shape[0]
    avg, top = _hit_density(hits, 0, T, density)
    counts = np.zeros(num_pats, np.int64)
    step_entropy = _entropy_of_ids(pats, 0, T, counts)
    num_phrases = T // phrase_len
    acc = 0.0
    for k in range(num_phrases):
        acc += _entropy_of_ids(pats, k * phrase_len, (k + 1) * phrase_len, counts)
    return avg, top, step_entropy, acc / num_phrases if num_phrases else 0.0


def song_metrics(roll, *, steps_per_bar=16, bars_per_phrase=4, ngram_n=4) -> dict[str, np.ndarray]:
    """avg_hits, max_hits, drum_density [D], step_entropy, phrase_entropy, ngram_diversity."""
    hits = check_roll(roll)
    T, D = hits.shape
    check_positive(steps_per_bar=steps_per_bar, bars_per_phrase=bars_per_phrase, ngram_n=ngram_n)
    out = {name: np.zeros(shape(D), dtype) for name, (dtype, shape) in SONG_SCHEMA.items()}
    if T == 0:
        return out
    pats, num_pats = pattern_ids(hits)
    avg, top, step_h, phrase_h = _song(hits, pats, num_pats, steps_per_bar * bars_per_phrase,
                                       out["drum_density"])
    out["avg_hits"][...], out["max_hits"][...] = avg, top
    out["step_entropy"][...], out["phrase_entropy"][...] = step_h, phrase_h
    out["ngram_diversity"][...] = ngram_ids(hits, ngram_n)[1]
    return out


@njit(cache=True, nogil=True)
def _sections(hits, sec, steps_per_bar, threshold, avg_hits, drum_density, max_hits, dense_frac):
    for k in range(sec.shape[0]):
        s, e = sec[k, 0], sec[k, 1]
        avg_hits[k], max_hits[k] = _hit_density(hits, s, e, drum_density[k])
        dense_frac[k] = _dense_fraction(hits, s, e, steps_per_bar, threshold)


def section_metrics(roll, sections=None, *, steps_per_bar=16, bars_per_phrase=4,
                    dense_threshold=None) -> dict[str, np.ndarray]:
    """avg_hits, drum_density [K, D], max_hits, dense_frac of each (start, end) section.

    Without sections: one per phrase of steps_per_bar * bars_per_phrase steps (last may be partial).
    """
    hits = check_roll(roll)
    T, D = hits.shape
    check_positive(steps_per_bar=steps_per_bar, bars_per_phrase=bars_per_phrase)
    sec = check_sections(sections, T, steps_per_bar * bars_per_phrase)
    out = {name: np.zeros((len(sec), *shape(D)), dtype) for name, (dtype, shape) in SECTION_SCHEMA.items()}
    _sections(hits, sec, int(steps_per_bar), default_dense_threshold(D, dense_threshold),
              *(out[name] for name in SECTION_SCHEMA))
    return out


@njit(cache=True, nogil=True)
def _aggregate(hits, size):
    T, D = hits.shape
    units = T // size
    out = np.zeros((units, D), np.float32)
    for u in range(units):
        for d in range(D):
            n = 0
            for t in range(u * size, (u + 1) * size):
                n += hits[t, d]
            out[u, d] = n / size
    return out


def bar_means(roll, *, steps_per_bar=16) -> np.ndarray:
    """[T // spb, D]: mean of the roll over each complete bar of the absolute grid."""
    check_positive(steps_per_bar=steps_per_bar)
    return _aggregate(check_roll(roll), int(steps_per_bar))


def phrase_means(roll, *, steps_per_bar=16, bars_per_phrase=4) -> np.ndarray:
    """[T // (spb * bars_per_phrase), D]: mean of the roll over each complete phrase."""
    check_positive(steps_per_bar=steps_per_bar, bars_per_phrase=bars_per_phrase)
    return _aggregate(check_roll(roll), int(steps_per_bar * bars_per_phrase))
