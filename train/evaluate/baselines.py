"""Baselines the model is scored against, on exactly the windows the model sees.

Every baseline is fitted with `fit(songs, steps_per_bar=None)` (each song's bar length: repeat_bar
and the position tables use it) and follows the model's output layout: `predict(steps, mask, steps_per_bar, start)`
takes windows `steps` [B, L, D] (0/1) starting at song step `start` [B] and returns `probs`
[B, L, D] where `probs[:, t]` is the probability of each drum being hit at step t+1, computed only
from `steps[:, :t+1]` of the same window and the position in the bar (the model never sees the
song before its window, so neither do the baselines). Every probability is floored
to [eps, 1 - eps] so the negative log-likelihood stays finite.

- `RepeatBarBaseline`: step t+1 repeats step t+1-spb of the window, with per-drum copy
  probabilities learnt on the training split (or a literal copy); the window's first bar has no
  bar to repeat and falls back to the per-drum frequencies.
- `FrequencyBaseline`: p_d = (hits of drum d) / (steps), counted over the training split; the
  same at every step.
- `PositionBaseline`: per drum, p_d(position in bar of step t+1, the same drum's hits `lags` bars
  before step t+1), counted on the training split with add-one smoothing,
      p = (hits + 1) / (count + 2);
  where the window does not reach back the longest lags, the deepest table whose lags it does
  reach is used (position alone at the window's first bar). One set of tables per bar length
  (meter) of the training songs, each window read with its song's; a meter the training split
  lacks falls back to the per-drum frequencies.
- `NGramBaseline`: an n-gram model over step patterns (the bitmask of drums hit at a step) with
  back-off: the prediction for a context of k patterns interpolates its counts with the
  prediction of the (k-1)-pattern context,
      p_k(d | c) = (hits_k(c, d) + alpha * p_{k-1}(d | c')) / (count_k(c) + alpha),
  and a context never seen in training backs off to p_{k-1} unchanged (c' drops the oldest
  pattern; p_0 is the per-drum frequency).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_EPS = 1e-4


def _floor(probs: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(probs, eps, 1.0 - eps)


def _as_hits(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) > 0).astype(np.float64)


class FrequencyBaseline:
    """p_d = sum_t x_{t,d} / T over every step of every training song."""

    name = "frequency"

    def __init__(self, eps: float = DEFAULT_EPS):
        self.eps = float(eps)
        self.rates: np.ndarray | None = None

    def fit(self, songs: Iterable[np.ndarray], steps_per_bar=None) -> "FrequencyBaseline":
        hits, steps = None, 0
        for roll in songs:
            roll = _as_hits(roll)
            hits = roll.sum(0) if hits is None else hits + roll.sum(0)
            steps += roll.shape[0]
        if hits is None or steps == 0:
            raise ValueError("frequency baseline: the training split has no steps")
        self.rates = hits / steps
        return self

    def predict(self, steps: np.ndarray, mask: np.ndarray | None = None, steps_per_bar=None,
                start=None) -> np.ndarray:
        b, length, _ = steps.shape
        return _floor(np.broadcast_to(self.rates, (b, length, len(self.rates))).copy(), self.eps)


class RepeatBarBaseline:
    """Step t+1 repeats step t+1-spb; the window's first bar uses the per-drum frequencies.

    Calibrated (default): p_d = a_d where drum d was hit one bar earlier, else b_d, with
        a_d = P(x_{t,d} = 1 | x_{t-spb,d} = 1),  b_d = P(x_{t,d} = 1 | x_{t-spb,d} = 0)
    counted over the training split, so a copy is as confident as copies were right in training.
    Uncalibrated: a_d = 1, b_d = 0 (a literal copy). Both floored to [eps, 1 - eps]; on a strictly
    repeating song both give a_d = 1, b_d = 0.
    """

    name = "repeat_bar"

    def __init__(self, steps_per_bar: int, eps: float = DEFAULT_EPS, calibrated: bool = True):
        self.steps_per_bar = int(steps_per_bar)
        self.eps = float(eps)
        self.calibrated = bool(calibrated)
        self.fallback = FrequencyBaseline(eps)
        self.p_repeat: np.ndarray | None = None   # a_d
        self.p_new: np.ndarray | None = None      # b_d

    def fit(self, songs: Iterable[np.ndarray], steps_per_bar: Iterable[int] | None = None) -> "RepeatBarBaseline":
        """`steps_per_bar`: each song's bar length (its meter); default the one given at construction."""
        songs = [_as_hits(s) for s in songs]
        bars = [self.steps_per_bar] * len(songs) if steps_per_bar is None else [int(b) for b in steps_per_bar]
        self.fallback.fit(songs)
        num_drums = len(self.fallback.rates)
        both, prev, cur_only, rest = (np.zeros(num_drums) for _ in range(4))
        for x, spb in zip(songs, bars):
            if len(x) > spb:
                before, now = x[:-spb], x[spb:]
                both += (before * now).sum(0)
                prev += before.sum(0)
                cur_only += ((1 - before) * now).sum(0)
                rest += (1 - before).sum(0)
        if self.calibrated:
            self.p_repeat = np.divide(both, prev, out=np.ones(num_drums), where=prev > 0)
            self.p_new = np.divide(cur_only, rest, out=np.zeros(num_drums), where=rest > 0)
        else:
            self.p_repeat, self.p_new = np.ones(num_drums), np.zeros(num_drums)
        return self

    def predict(self, steps: np.ndarray, mask: np.ndarray | None = None,
                steps_per_bar: np.ndarray | None = None, start=None) -> np.ndarray:
        """`steps_per_bar` [B]: each window's bar length (its song's meter); default the constructor's."""
        x = _as_hits(steps)
        probs = self.fallback.predict(x)
        bars = np.full(len(x), self.steps_per_bar) if steps_per_bar is None else np.asarray(steps_per_bar)
        length = x.shape[1]
        for spb in np.unique(bars):  # one vectorised copy per meter in the batch
            rows, spb = bars == spb, int(spb)
            if length >= spb:  # probs[:, t] predicts step t+1 from step t+1-spb (t >= spb-1)
                before = x[rows, : length - spb + 1]
                probs[rows, spb - 1:] = np.where(before > 0, self.p_repeat, self.p_new)
        return _floor(probs, self.eps)


class PositionBaseline:
    """p_d(phase of step t+1 in the bar, x_{t+1-k*spb, d} for k in lags), add-one smoothed (see above).

    Table j conditions on the first j lags (lags ascending): hits and counts [spb, 2^j, D], fitted
    on the training songs' steps where all j lags lie inside the song (songs start on a bar); one
    list of tables per bar length of the training songs (`by_meter`).
    """

    def __init__(self, steps_per_bar: int, lags=(), eps: float = DEFAULT_EPS):
        self.steps_per_bar, self.eps = int(steps_per_bar), float(eps)
        self.lags = tuple(sorted(int(k) for k in lags))
        if any(k < 1 for k in self.lags):
            raise ValueError(f"position baseline: lags must be >= 1 bar, got {self.lags}")
        self.name = "position" + ("_lag" + "".join(map(str, self.lags)) if self.lags else "")
        self.tables: list[np.ndarray] = []      # per j: p [spb, 2^j, D] (the constructor's bar length)
        self.by_meter: dict[int, list[np.ndarray]] = {}   # bar length -> its tables
        self.fallback = FrequencyBaseline(eps)   # a meter the training songs lack

    @staticmethod
    def _states(lagged: list[np.ndarray]):
        """The lag pattern as a number: bit i = hit `lags[i]` bars earlier (0 with no lags)."""
        return sum(((a > 0).astype(np.int64) << i for i, a in enumerate(lagged)), np.int64(0))

    def fit(self, songs: Iterable[np.ndarray], steps_per_bar=None) -> "PositionBaseline":
        """`steps_per_bar`: each song's bar length (default the constructor's for all)."""
        songs = [_as_hits(s) for s in songs]
        if not songs or not sum(len(s) for s in songs):
            raise ValueError(f"{self.name} baseline: the training split has no steps")
        bars = np.full(len(songs), self.steps_per_bar) if steps_per_bar is None else np.asarray(steps_per_bar)
        self.fallback.fit(songs)
        self.by_meter = {int(spb): self._fit_meter([x for x, b in zip(songs, bars) if b == spb], int(spb))
                         for spb in np.unique(bars)}
        self.tables = self.by_meter.get(self.steps_per_bar, [])
        return self

    def _fit_meter(self, songs: list[np.ndarray], spb: int) -> list[np.ndarray]:
        D = songs[0].shape[1]
        tables = []
        for j in range(len(self.lags) + 1):
            size = spb * (1 << j) * D
            hits, counts = np.zeros(size), np.zeros(size)
            skip = self.lags[j - 1] * spb if j else 0
            for x in songs:
                t = np.arange(skip, len(x))
                lagged = [x[t - k * spb] for k in self.lags[:j]]
                key = ((t % spb)[:, None] * (1 << j) + self._states(lagged)) * D + np.arange(D)
                hits += np.bincount(key.ravel(), weights=x[t].ravel(), minlength=size)
                counts += np.bincount(key.ravel(), minlength=size)
            tables.append(((hits + 1) / (counts + 2)).reshape(spb, 1 << j, D))
        return tables

    def predict(self, steps: np.ndarray, mask: np.ndarray | None = None, steps_per_bar=None,
                start=None) -> np.ndarray:
        """`steps_per_bar` [B]: each window's bar length (default the constructor's): each row is
        read with its meter's tables."""
        x = _as_hits(steps)
        B = len(x)
        start = np.zeros(B, np.int64) if start is None else np.asarray(start, np.int64)
        bars = np.full(B, self.steps_per_bar) if steps_per_bar is None else np.asarray(steps_per_bar)
        probs = np.empty(x.shape)
        for spb in np.unique(bars):   # one vectorised pass per meter in the batch
            rows = bars == spb
            tables = self.by_meter.get(int(spb))
            probs[rows] = (self._predict(x[rows], start[rows], int(spb), tables) if tables is not None
                           else self.fallback.predict(x[rows]))
        return _floor(probs, self.eps)

    def _predict(self, x: np.ndarray, start: np.ndarray, spb: int, tables: list[np.ndarray]) -> np.ndarray:
        B, L, D = x.shape
        t = np.arange(L)
        phase = (start[:, None] + t[None, :] + 1) % spb                          # [B, L]
        span = (self.lags[-1] if self.lags else 0) * spb
        padded = np.concatenate([np.zeros((B, span, D)), x], 1)          # padded[:, span + i] = x[:, i]
        lagged = [padded[:, span + 1 - k * spb: span + 1 - k * spb + L] for k in self.lags]   # x[t+1-k*spb]
        # j(t): how many lags reach inside the window from step t+1
        depth = np.searchsorted(np.array([k * spb for k in self.lags]), t + 1, side="right")
        probs = np.empty((B, L, D))
        for j, table in enumerate(tables):
            cols = depth == j
            if cols.any():
                state = self._states([a[:, cols] for a in lagged[:j]])
                probs[:, cols] = table[phase[:, cols, None], state, np.arange(D)]
        return probs


class NGramBaseline:
    """n-gram over step patterns (contexts of 0..n-1 patterns) with interpolated back-off."""

    name = "ngram"

    def __init__(self, n: int = 4, alpha: float = 1.0, eps: float = DEFAULT_EPS):
        if n < 1:
            raise ValueError(f"n-gram baseline: n must be >= 1, got {n}")
        self.n, self.alpha, self.eps = int(n), float(alpha), float(eps)
        self.num_drums = 0
        # Per context length k: sorted context keys, their counts and per-drum next-step hit counts.
        self.tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @staticmethod
    def max_n(num_drums: int) -> int:
        """The longest n whose context of n-1 patterns fits a 64-bit key."""
        return 62 // max(num_drums, 1) + 1

    def _check_bits(self, num_drums: int) -> None:
        if self.n > self.max_n(num_drums):
            raise ValueError(f"n-gram baseline: {self.n - 1} patterns of {num_drums} drums do not fit a "
                             f"64-bit context key; lower evaluate.ngram_n")

    @staticmethod
    def _patterns(x: np.ndarray) -> np.ndarray:
        """Bitmask of the drums hit at each step: [..., L, D] -> [..., L] int64."""
        weights = np.left_shift(np.int64(1), np.arange(x.shape[-1], dtype=np.int64))
        return (x > 0).astype(np.int64) @ weights

    def _keys(self, patterns: np.ndarray, k: int) -> np.ndarray:
        """Key of the context of the k patterns ending at each step t (valid for t >= k-1)."""
        keys = np.zeros_like(patterns)
        for j in range(k):  # pattern t-j goes to bits [j*D, (j+1)*D)
            keys[..., j:] |= np.left_shift(patterns[..., : patterns.shape[-1] - j], j * self.num_drums)
        return keys

    def fit(self, songs: Iterable[np.ndarray], steps_per_bar=None) -> "NGramBaseline":
        keys_by_k: list[list[np.ndarray]] = [[] for _ in range(self.n)]
        next_by_k: list[list[np.ndarray]] = [[] for _ in range(self.n)]
        for roll in songs:
            x = _as_hits(roll)
            if not self.num_drums:
                self.num_drums = x.shape[1]
                self._check_bits(self.num_drums)
            pats = self._patterns(x)
            keys_by_k[0].append(np.zeros(len(pats), np.int64))  # the empty context predicts every step
            next_by_k[0].append(x)
            for k in range(1, self.n):
                # The k patterns ending at t (t = k-1 .. T-2) predict step t+1.
                if len(pats) > k:
                    keys_by_k[k].append(self._keys(pats, k)[k - 1:-1])
                    next_by_k[k].append(x[k:])
        if not self.num_drums:
            raise ValueError("n-gram baseline: the training split has no steps")
        self.tables = []
        for k in range(self.n):
            if not keys_by_k[k]:
                self.tables.append((np.zeros(0, np.int64), np.zeros(0), np.zeros((0, self.num_drums))))
                continue
            keys = np.concatenate(keys_by_k[k])
            nxt = np.concatenate(next_by_k[k])
            uniq, inverse = np.unique(keys, return_inverse=True)
            counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
            hits = np.stack([np.bincount(inverse, weights=nxt[:, d], minlength=len(uniq))
                             for d in range(self.num_drums)], axis=1)
            self.tables.append((uniq, counts, hits))
        return self

    def _lookup(self, k: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uniq, counts, hits = self.tables[k]
        if len(uniq) == 0:
            found = np.zeros(keys.shape, bool)
            return found, np.zeros(keys.shape), np.zeros(keys.shape + (self.num_drums,))
        idx = np.clip(np.searchsorted(uniq, keys), 0, len(uniq) - 1)
        found = uniq[idx] == keys
        return found, counts[idx], hits[idx]

    def predict(self, steps: np.ndarray, mask: np.ndarray | None = None, steps_per_bar=None,
                start=None) -> np.ndarray:
        x = _as_hits(steps)
        if x.shape[-1] != self.num_drums:
            raise ValueError(f"n-gram baseline: fitted on {self.num_drums} drums, got {x.shape[-1]}")
        pats = self._patterns(x)
        _, c0, h0 = self._lookup(0, np.zeros(pats.shape, np.int64))
        probs = h0 / np.maximum(c0, 1.0)[..., None]
        t = np.arange(pats.shape[-1])
        for k in range(1, self.n):
            found, counts, hits = self._lookup(k, self._keys(pats, k))
            found &= (t >= k - 1)  # a context of k patterns needs k steps of this window
            smoothed = (hits + self.alpha * probs) / np.maximum(counts + self.alpha, 1e-12)[..., None]
            probs = np.where(found[..., None], smoothed, probs)
        return _floor(probs, self.eps)


def select_ngram(train_songs: list[np.ndarray], score, ns: Iterable[int], alphas: Iterable[float],
                 eps: float = DEFAULT_EPS) -> tuple["NGramBaseline", list[dict]]:
    """The n-gram (n, alpha) of lowest `score(baseline)` (validation NLL); and every grid point's score.

    One fit per n (counts do not depend on alpha); alpha only changes the back-off at predict time.
    """
    best, grid = None, []
    num_drums = np.asarray(train_songs[0]).shape[1]
    for n in ns:
        if n > NGramBaseline.max_n(num_drums):
            continue
        model = NGramBaseline(n, 1.0, eps).fit(train_songs)
        for alpha in alphas:
            model.alpha = float(alpha)
            value = float(score(model))
            grid.append({"n": int(n), "alpha": float(alpha), "nll_bits_per_step": value})
            if best is None or value < best[0]:
                best = (value, int(n), float(alpha))
    if best is None:
        raise ValueError(f"n-gram selection: no n in {list(ns)} fits {num_drums} drums")
    chosen = NGramBaseline(best[1], best[2], eps).fit(train_songs)
    return chosen, grid


def make_baselines(steps_per_bar: int, ngram_n: int = 4, ngram_alpha: float = 1.0,
                   eps: float = DEFAULT_EPS, repeat_calibrated: bool = True, position_lags=(1, 2)) -> list:
    """The baselines of the evaluation, unfitted, in report order."""
    return [RepeatBarBaseline(steps_per_bar, eps, repeat_calibrated), FrequencyBaseline(eps),
            PositionBaseline(steps_per_bar, (), eps), PositionBaseline(steps_per_bar, position_lags, eps),
            NGramBaseline(ngram_n, ngram_alpha, eps)]
