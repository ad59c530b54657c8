"""Novelty (memorisation) check: how much of a set of windows is copied from the training songs.

Every bar is hashed into one uint64 from its hit bits (the bar's spb x D bits packed into bytes,
each 8-byte word mixed in by splitmix64); an n-bar segment's hash chains its bars' hashes in order.
The training songs are hashed at every step offset (a copy need not sit on the training song's bar
lines), the checked windows on their own bar lines. A segment is "found" when its hash is among the
training hashes (a sorted array and searchsorted; 64-bit hashes make a false match on a few million
segments a chance of about 1e-7). Silent segments (no hit) are left out of every share: silence
is not a copy.

Figures per set of windows (`novelty`):
- found_{n}bar: the share of non-silent bar-aligned n-bar segments (n = 1, 2, 4; every bar start
  whose n bars fit in the window) found verbatim anywhere in the training songs;
- longest_run: the most consecutive bars of one window found together in one training song (its
  mean and max over windows);
- jaccard_4bar: per non-overlapping 4-bar segment, the Jaccard similarity of its hit set to the
  nearest training 4-bar segment starting on any bar line of a training song (mean, median, share
  >= 0.9);
- duplicates: the share of non-silent windows whose whole hit pattern equals another window's of
  the same set (a generator that collapses onto a few patterns).
Real windows of the reported split against the training songs give the natural rates beside them.
"""
from __future__ import annotations

import numpy as np

SEGMENT_BARS = (1, 2, 4)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = (x + _GOLDEN).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _chain(h: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Order-sensitive combination of a segment's hash with the next bar's hash."""
    with np.errstate(over="ignore"):
        return _splitmix(h * np.uint64(31) ^ nxt)


def hash_rows(bits: np.ndarray) -> np.ndarray:
    """uint64 hash of each row of a 2-D 0/1 array (row = one bar's steps x drums, flattened)."""
    packed = np.packbits(np.asarray(bits, bool), axis=1)
    pad = (-packed.shape[1]) % 8
    words = np.pad(packed, ((0, 0), (0, pad))).view(np.uint64)
    h = np.full(len(words), np.uint64(len(bits[0]) if len(bits) else 0), np.uint64)
    for k in range(words.shape[1]):
        h = _chain(h, words[:, k])
    return h


def _step_bar_hashes(song: np.ndarray, spb: int) -> np.ndarray:
    """Hash of the bar starting at every step of a song (len(song) - spb + 1 of them)."""
    if len(song) < spb:
        return np.zeros(0, np.uint64)
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(song, np.uint8) > 0, spb, axis=0)
    return hash_rows(view.transpose(0, 2, 1).reshape(len(view), -1))


class TrainIndex:
    """Sorted hashes of every n-bar segment of the training songs at every step offset, n = 1..max_bars
    (built lazily, one n at a time), and the bar-aligned 4-bar hit sets for the Jaccard neighbour."""

    def __init__(self, songs: list[np.ndarray], steps_per_bar: int, jaccard_bars: int = 4):
        self.spb = int(steps_per_bar)
        self.bar = [_step_bar_hashes(s, self.spb) for s in songs]     # per song, per step
        self.chains = list(self.bar)                                     # n-bar hashes, current n
        self.n = 1
        self.sorted = {1: np.unique(np.concatenate(self.bar + [np.zeros(0, np.uint64)]))}
        segs = [_bar_segments(np.asarray(s) > 0, self.spb, jaccard_bars, every_bar=True) for s in songs if len(s)]
        segs = [s for s in segs if len(s)]
        flat = np.concatenate(segs) if segs else np.zeros((0, self.spb * jaccard_bars * 1), bool)
        self.segments = flat[flat.any(1)] if len(flat) else flat

    def hashes(self, n: int) -> np.ndarray:
        """Sorted unique hashes of every n-bar training segment (any step offset)."""
        while self.n < n:
            self.n += 1
            shift = (self.n - 1) * self.spb
            self.chains = [_chain(c[:len(c) - self.spb], b[shift:]) if len(c) > self.spb else
                           np.zeros(0, np.uint64) for c, b in zip(self.chains, self.bar)]
            self.sorted[self.n] = np.unique(np.concatenate(self.chains + [np.zeros(0, np.uint64)]))
        return self.sorted[n]


def _bar_segments(roll: np.ndarray, spb: int, bars: int, every_bar: bool = False) -> np.ndarray:
    """Bar-aligned `bars`-bar segments of a roll, flattened [S, bars*spb*D] (bool): non-overlapping,
    or (`every_bar`) one starting on every bar line."""
    width, d = bars * spb, roll.shape[1]
    if len(roll) < width:
        return np.zeros((0, width * d), bool)
    if not every_bar:
        s = len(roll) // width
        return roll[:s * width].reshape(s, width * d)
    nb = len(roll) // spb
    bar_rows = roll[:nb * spb].reshape(nb, spb * d)
    view = np.lib.stride_tricks.sliding_window_view(bar_rows, bars, axis=0)      # [nb-bars+1, spb*d, bars]
    return view.transpose(0, 2, 1).reshape(len(view), width * d)


def _contains(sorted_hashes: np.ndarray, h: np.ndarray) -> np.ndarray:
    if len(sorted_hashes) == 0:
        return np.zeros(len(h), bool)
    i = np.minimum(np.searchsorted(sorted_hashes, h), len(sorted_hashes) - 1)
    return sorted_hashes[i] == h


def _window_bars(windows: list[np.ndarray], spb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bar hashes, bar silent?, window index) of every whole bar of every window, in order."""
    rows, silent, owner = [], [], []
    for w, roll in enumerate(windows):
        nb = len(roll) // spb
        if nb == 0:
            continue
        bars = (np.asarray(roll[:nb * spb]) > 0).reshape(nb, -1)
        rows.append(bars)
        silent.append(~bars.any(1))
        owner.append(np.full(nb, w))
    if not rows:
        return np.zeros(0, np.uint64), np.zeros(0, bool), np.zeros(0, np.int64)
    return hash_rows(np.concatenate(rows)), np.concatenate(silent), np.concatenate(owner)


def found_shares(windows: list[np.ndarray], index: TrainIndex, bars=SEGMENT_BARS) -> tuple[dict, dict]:
    """({n: share of non-silent n-bar segments found in training}, {n: segments counted}) and, under
    key "longest_run", each window's longest run of bars found together in one training song."""
    h1, silent1, owner = _window_bars(windows, index.spb)
    shares, counts = {}, {}
    h, silent, same = h1, silent1, np.ones(len(h1), bool)        # n-bar segment starting at each bar
    run = np.zeros(len(windows), np.int64)
    n = 1
    while len(h):
        found = _contains(index.hashes(n), h) & same
        if n in bars:
            counted = same & ~silent
            shares[n] = float(found[counted].mean()) if counted.any() else float("nan")
            counts[n] = int(counted.sum())
        hit = np.unique(owner[:len(h)][found])
        run[hit] = n
        if not found.any() and n >= max(bars):
            break
        # extend every segment by its next bar; a segment whose next bar is another window's is dropped
        nxt = slice(n, None)
        h = _chain(h[:len(h) - 1], h1[nxt][:len(h) - 1]) if len(h) > 1 else h[:0]
        same = same[:len(h)] & (owner[:len(h)] == owner[nxt][:len(h)])
        silent = silent[:len(h)] & silent1[nxt][:len(h)]
        n += 1
    for n in bars:
        shares.setdefault(n, float("nan"))
        counts.setdefault(n, 0)
    return {"shares": shares, "counts": counts}, {"longest_run": run}


def nearest_jaccard(windows: list[np.ndarray], index: TrainIndex, bars: int = 4, max_segments: int = 512,
                    chunk: int = 256, seed: int = 0) -> np.ndarray:
    """Per non-silent non-overlapping `bars`-bar segment of the windows (at most `max_segments`,
    drawn deterministically): the Jaccard similarity of its hits to the nearest bar-aligned training
    segment. Intersections by a float32 matrix product, chunked."""
    segs = [_bar_segments(np.asarray(w) > 0, index.spb, bars) for w in windows]
    segs = [s for s in segs if len(s)]
    if not segs or not len(index.segments):
        return np.zeros(0)
    q = np.concatenate(segs)
    q = q[q.any(1)]
    if len(q) > max_segments:
        q = q[np.sort(np.random.default_rng(seed).choice(len(q), max_segments, replace=False))]
    if q.shape[1] != index.segments.shape[1]:
        return np.zeros(0)
    t = index.segments.astype(np.float32)
    t_size = t.sum(1)
    best = np.zeros(len(q))
    for i in range(0, len(q), chunk):
        a = q[i:i + chunk].astype(np.float32)
        inter = a @ t.T
        union = a.sum(1)[:, None] + t_size[None, :] - inter
        best[i:i + chunk] = (inter / np.maximum(union, 1)).max(1)
    return best


def duplicate_share(windows: list[np.ndarray]) -> float:
    """Share of non-silent windows whose whole hit pattern equals another window's of the same set."""
    rolls = [np.asarray(w) > 0 for w in windows if np.asarray(w).any()]
    if len(rolls) < 2:
        return 0.0
    width = max(r.size for r in rolls)
    flat = np.zeros((len(rolls), width + 64), bool)
    for i, r in enumerate(rolls):
        flat[i, :r.size] = r.ravel()
        flat[i, width:width + 32] = np.unpackbits(np.array([r.shape[0]], ">u4").view(np.uint8))
    _, inverse, counts = np.unique(hash_rows(flat), return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def novelty(windows: list[np.ndarray], index: TrainIndex, max_segments: int = 512, seed: int = 0) -> dict:
    """Every novelty figure of one set of windows against the training index (see the module docstring)."""
    found, runs = found_shares(windows, index)
    run = runs["longest_run"]
    jac = nearest_jaccard(windows, index, max_segments=max_segments, seed=seed)
    out = {"windows": len(windows)}
    for n in SEGMENT_BARS:
        out[f"found_{n}bar"] = found["shares"][n]
        out[f"segments_{n}bar"] = found["counts"][n]
    out.update({
        "longest_run_mean": float(run.mean()) if len(run) else 0.0,
        "longest_run_max": int(run.max()) if len(run) else 0,
        "jaccard_4bar_mean": float(jac.mean()) if len(jac) else float("nan"),
        "jaccard_4bar_median": float(np.median(jac)) if len(jac) else float("nan"),
        "jaccard_4bar_ge_0.9": float((jac >= 0.9).mean()) if len(jac) else float("nan"),
        "duplicates": duplicate_share(windows),
    })
    return out
