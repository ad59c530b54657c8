"""Scores of next-step drum predictions, and the comparison of generated with real metric sets.

Teacher-forced scores take `probs` [B, L, D] in the model's layout (`probs[:, t]` is the
probability of each drum at step t+1), the windows `steps` [B, L, D] and `mask` [B, L]. The targets
are y = steps[:, 1:], scored where mask[:, 1:] is True (a real step); step 0 of a window has no
prediction. With N scored steps and D drums:

- NLL in bits per step:  NLL = -(1/N) * sum_{t,d} [ y log2 p + (1 - y) log2 (1 - p) ]
  (the code length of a step's whole drum pattern; 0 is perfect, D bits is a coin per drum).
- BCE:  -(1/(N D)) * sum_{t,d} [ y ln p + (1 - y) ln (1 - p) ]   (nats per drum-step, the
  training loss).
- Onsets at threshold tau: a hit is predicted where p >= tau. precision = TP / (TP + FP),
  recall = TP / (TP + FN), F1 = 2 P R / (P + R) (each 0 when its denominator is 0), per drum and
  overall (micro: counts pooled over drums). tau maximises overall F1 on the validation split,
  searched over the edges of `NUM_BINS` equal bins of [0, 1].

Generated vs real (Yang & Lerch, "On the evaluation of generative models in music", Neural
Computing and Applications 32, 2020): for a metric with values x_i (real set R) and y_j
(generated set G), each value a vector (a scalar metric is a 1-vector),
- intra-set distances of R:  { ||x_i - x_j|| : i < j },
- inter-set distances:       { ||x_i - y_j|| : all i, j },
each smoothed into a probability density with a Gaussian kernel density estimate (bandwidth by
Scott's rule, h = 1.06 * std * n^(-1/5); sets of more than `max_points` distances are subsampled
deterministically; computed by linear binning on the grid and one convolution), evaluated on a
common grid. Then
- overlapping area   OA(p, q) = integral of min(p(x), q(x)) dx     (1 = same, 0 = disjoint),
- KL divergence      KL(p || q) = integral of p(x) ln(p(x) / q(x)) dx  (nats, 0 = same),
with p the density of the intra-set distances of R and q that of the inter-set distances: a
generator whose samples lie among the real ones as the real ones lie among each other gives a
high OA and a low KL. Both densities are evaluated on the same grid (the widely copied mgeval code
evaluates each KDE on its own grid, so its "KL" is not a divergence). A set of distances with no
spread (a metric constant over the real windows, say) is a narrow spike, never a division by
zero, and `zero_variance` says which set's metric is constant (with a constant real set, OA and
KL only say whether the generated windows sit at that same value). With `groups` (the song of each real
window), OA and KL get bootstrap intervals: songs resampled with replacement, generated windows
likewise, pairs of a window with itself left out of the intra-set distances.
"""
from __future__ import annotations

import numpy as np

NUM_BINS = 200
PROB_FLOOR = 1e-12


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    return precision, recall, f1


class ScoreAccumulator:
    """Accumulates teacher-forced scores over batches of windows (memory independent of the split).

    Probabilities are binned (NUM_BINS equal bins) separately for target hits and non-hits per drum,
    so TP/FP/FN at every candidate threshold come from cumulative sums.
    """

    def __init__(self, num_drums: int, num_bins: int = NUM_BINS):
        self.num_drums, self.num_bins = int(num_drums), int(num_bins)
        self.nll_bits = 0.0
        self.steps = 0
        self.pos = np.zeros((num_drums, num_bins), np.int64)   # target hits per probability bin
        self.neg = np.zeros((num_drums, num_bins), np.int64)   # target rests per probability bin

    def update(self, probs: np.ndarray, steps: np.ndarray, mask: np.ndarray | None = None,
               log2_prob: np.ndarray | None = None) -> None:
        """Score positions 0..L-2 of windows `steps` against steps 1..L-1 (the targets inside the window)."""
        y = np.asarray(steps)[:, 1:]
        m = np.ones(y.shape[:2], bool) if mask is None else np.asarray(mask, bool)[:, 1:]
        self.update_targets(np.asarray(probs)[:, :-1], y, m,
                            None if log2_prob is None else np.asarray(log2_prob)[:, :y.shape[1]])

    def update_targets(self, probs: np.ndarray, targets: np.ndarray, scored: np.ndarray,
                       log2_prob: np.ndarray | None = None) -> None:
        """Score `probs` [B, L, D] against `targets` [B, L, D] where `scored` [B, L] is True.

        `log2_prob` [B, L] (optional): log2 p of each target step's whole drum vector, from a model
        whose drums are not independent (joint/autoregressive heads); the NLL then sums it instead
        of the per-drum formula, which only holds for independent predictions."""
        m = np.asarray(scored, bool)
        p = np.clip(np.asarray(probs, np.float64)[m], PROB_FLOOR, 1.0 - PROB_FLOOR)   # [N, D]
        y = np.asarray(targets)[m] > 0
        if log2_prob is None:
            self.nll_bits -= float(np.where(y, np.log2(p), np.log2(1.0 - p)).sum())
        else:
            self.nll_bits -= float(np.asarray(log2_prob, np.float64)[m].sum())
        self.steps += int(p.shape[0])
        bins = np.minimum((p * self.num_bins).astype(np.int64), self.num_bins - 1)
        for d in range(self.num_drums):
            self.pos[d] += np.bincount(bins[y[:, d], d], minlength=self.num_bins)
            self.neg[d] += np.bincount(bins[~y[:, d], d], minlength=self.num_bins)

    def add(self, other: "ScoreAccumulator") -> "ScoreAccumulator":
        """Pool `other`'s counts into this one (scores of a set of songs = their pooled counts)."""
        self.nll_bits += other.nll_bits
        self.steps += other.steps
        self.pos += other.pos
        self.neg += other.neg
        return self

    def threshold_bin(self, threshold: float) -> int:
        return int(np.clip(np.ceil(threshold * self.num_bins - 1e-9), 0, self.num_bins - 1))

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TP, FP, FN [num_bins, D]; row b is the threshold tau_b = b / num_bins (hit where p >= tau_b)."""
        tp = self.pos[:, ::-1].cumsum(1)[:, ::-1].T      # hits with p in a bin >= b
        fp = self.neg[:, ::-1].cumsum(1)[:, ::-1].T
        fn = self.pos.sum(1)[None, :] - tp
        return tp, fp, fn

    def thresholds(self) -> np.ndarray:
        return np.arange(self.num_bins) / self.num_bins

    def best_threshold(self) -> float:
        """The threshold that maximises overall (micro) F1; the lowest such one on ties."""
        tp, fp, fn = self.counts()
        _, _, f1 = _prf(tp.sum(1), fp.sum(1), fn.sum(1))
        return float(self.thresholds()[int(np.argmax(f1[1:])) + 1])  # tau = 0 predicts every step

    def result(self, threshold: float, drum_names: list[str] | None = None) -> dict:
        """NLL, BCE and onset precision/recall/F1 (overall and per drum) at `threshold`."""
        if self.steps == 0:
            raise ValueError("no scored steps (every window is shorter than 2 steps?)")
        names = drum_names or [f"drum{d}" for d in range(self.num_drums)]
        b = self.threshold_bin(threshold)
        tp, fp, fn = (a[b] for a in self.counts())
        p, r, f = _prf(tp, fp, fn)
        po, ro, fo = _prf(tp.sum(), fp.sum(), fn.sum())
        nll = self.nll_bits / self.steps
        return {
            "nll_bits_per_step": nll,
            "bce": nll * np.log(2.0) / self.num_drums,
            "threshold": float(b / self.num_bins),
            "precision": float(po), "recall": float(ro), "f1": float(fo),
            "scored_steps": self.steps,
            "per_drum": {n: {"precision": float(p[d]), "recall": float(r[d]), "f1": float(f[d]),
                             "support": int(tp[d] + fn[d])} for d, n in enumerate(names)},
        }


class SongScores:
    """A ScoreAccumulator per song: scores of any set of songs (a split's subsets) and bootstrap
    intervals over songs (songs, not steps, are the independent units: steps of a song are not)."""

    def __init__(self, num_drums: int, num_bins: int = NUM_BINS):
        self.num_drums, self.num_bins = int(num_drums), int(num_bins)
        self.songs: dict[int, ScoreAccumulator] = {}

    def update(self, probs: np.ndarray, targets: np.ndarray, scored: np.ndarray, song: np.ndarray,
               log2_prob: np.ndarray | None = None) -> None:
        song = np.asarray(song)
        for s in np.unique(song):
            rows = song == s
            acc = self.songs.setdefault(int(s), ScoreAccumulator(self.num_drums, self.num_bins))
            acc.update_targets(np.asarray(probs)[rows], np.asarray(targets)[rows], np.asarray(scored)[rows],
                               None if log2_prob is None else np.asarray(log2_prob)[rows])

    def total(self, songs=None) -> ScoreAccumulator:
        """The pooled scores of `songs` (default: every song scored)."""
        out = ScoreAccumulator(self.num_drums, self.num_bins)
        for s in (self.songs if songs is None else songs):
            if int(s) in self.songs:
                out.add(self.songs[int(s)])
        return out

    def bootstrap(self, threshold: float, songs=None, samples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> dict[str, list[float]]:
        """Percentile intervals of NLL (bits/step) and overall F1 at `threshold` over `samples`
        resamples of the songs with replacement (each resample pools its songs' counts)."""
        ids = [int(s) for s in (self.songs if songs is None else songs) if int(s) in self.songs]
        if not ids or samples < 1:
            return {}
        accs = [self.songs[s] for s in ids]
        b = accs[0].threshold_bin(threshold)
        nll = np.array([a.nll_bits for a in accs])
        steps = np.array([a.steps for a in accs], np.float64)
        tp, fp, fn = (np.array([c[b].sum() for c in per], np.float64) for per in zip(*(a.counts() for a in accs)))
        rng = np.random.default_rng(seed)
        # weights[r, i]: how often song i is drawn in resample r
        weights = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
                            for _ in range(int(samples))]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            nll_r = (weights @ nll) / (weights @ steps)
        _, _, f1_r = _prf(weights @ tp, weights @ fp, weights @ fn)
        q = [50 * (1 - level), 50 * (1 + level)]
        return {"nll_bits_per_step": [float(v) for v in np.nanpercentile(nll_r, q)],
                "f1": [float(v) for v in np.percentile(f1_r, q)]}


def nll_bits_per_step(probs: np.ndarray, steps: np.ndarray, mask: np.ndarray | None = None) -> float:
    """NLL in bits per step of one batch (see the module docstring)."""
    acc = ScoreAccumulator(np.asarray(steps).shape[-1])
    acc.update(probs, steps, mask)
    return acc.nll_bits / acc.steps


# ---------------------------------------------------------------- generated vs real (Yang & Lerch)

def _subsample(x: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    if len(x) <= max_points:
        return x
    return np.random.default_rng(seed).choice(x, size=max_points, replace=False)


def _bandwidth(x: np.ndarray, span: float) -> float:
    """Scott's rule; a set with no spread (all values equal) is a narrow spike (1/1000 of the
    grid's span), so it never divides by zero and two different constants stay disjoint."""
    h = 1.06 * float(np.std(x)) * len(x) ** (-0.2)
    return h if h > 0 else max(1e-3 * span, 1e-6)


def _kde(x: np.ndarray, grid: np.ndarray, h: float) -> np.ndarray:
    """Gaussian KDE of x on an even grid, by linear binning (each point split between its two
    grid nodes) and one convolution with the kernel: O(grid x kernel), not O(grid x points), with an
    error of order (grid step / h)^2 (Wand 1994). Normalised to integrate to 1."""
    dx = float(grid[1] - grid[0])
    pos = np.clip((x - grid[0]) / dx, 0, len(grid) - 1)
    i = np.minimum(np.floor(pos).astype(np.int64), len(grid) - 2)
    w = pos - i
    counts = np.bincount(i, 1 - w, len(grid)) + np.bincount(i + 1, w, len(grid))
    half = min(int(np.ceil(5 * h / dx)), len(grid) - 1)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / h) ** 2)
    pdf = np.convolve(counts, kernel)[half:half + len(grid)]
    area = np.trapezoid(pdf, grid)
    return pdf / area if area > 0 else pdf


def densities(a: np.ndarray, b: np.ndarray, *, grid_size: int = 1024, max_points: int = 4000
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian KDEs of two 1-D samples on one grid: (grid, p_a, p_b), each integrating to 1."""
    a = _subsample(np.asarray(a, np.float64).ravel(), max_points)
    b = _subsample(np.asarray(b, np.float64).ravel(), max_points)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("cannot compare an empty set of values")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    span = hi - lo
    ha, hb = _bandwidth(a, span), _bandwidth(b, span)
    pad = 5 * max(ha, hb)
    grid = np.linspace(lo - pad, hi + pad, grid_size)
    return grid, _kde(a, grid, ha), _kde(b, grid, hb)


def overlap_area(a: np.ndarray, b: np.ndarray, **kw) -> float:
    """OA = integral of min(p_a, p_b) over the KDEs of two 1-D samples; in [0, 1]."""
    return _overlap(*densities(a, b, **kw))


def kl_divergence(a: np.ndarray, b: np.ndarray, **kw) -> float:
    """KL(p_a || p_b) = integral of p_a ln(p_a / p_b) over the KDEs of two 1-D samples, in nats."""
    return _kl(*densities(a, b, **kw))


def _overlap(grid: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> float:
    # not clipped to [0, 1]: both densities integrate to 1, so a value outside is a bug to see
    return float(np.trapezoid(np.minimum(pa, pb), grid))


def _kl(grid: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> float:
    # not clipped at 0 either: a negative KL would be a bug (a sign, a swapped density), not noise
    pa, pb = np.maximum(pa, PROB_FLOOR), np.maximum(pb, PROB_FLOOR)
    return float(np.trapezoid(pa * np.log(pa / pb), grid))


def _vectors(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def intra_set_distances(x: np.ndarray) -> np.ndarray:
    """||x_i - x_j|| for i < j (rows of x are samples)."""
    v = _vectors(x)
    i, j = np.triu_indices(len(v), k=1)
    return np.linalg.norm(v[i] - v[j], axis=1)


def inter_set_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||x_i - y_j|| for every pair of a row of x and a row of y."""
    vx, vy = _vectors(x), _vectors(y)
    return np.linalg.norm(vx[:, None, :] - vy[None, :, :], axis=2).ravel()


def _oa_kl(intra: np.ndarray, inter: np.ndarray) -> tuple[float, float]:
    kde = densities(intra, inter)          # one grid, computed once for OA and KL
    return _overlap(*kde), _kl(*kde)


def _zero_variance(x: np.ndarray, y: np.ndarray) -> str | None:
    flat = [bool(np.all(v == v[0])) for v in (x, y)]
    return {(True, True): "both", (True, False): "real", (False, True): "generated"}.get(tuple(flat))


def _bootstrap_oa_kl(x: np.ndarray, y: np.ndarray, groups: np.ndarray, samples: int, level: float,
                     rng: np.random.Generator) -> dict[str, list[float]]:
    """Percentile intervals of OA and KL over resamples of the real songs and the generated windows."""
    d_rr = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    d_rg = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2)
    songs = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    oa, kl = [], []
    for _ in range(samples):
        rows = np.concatenate([songs[i] for i in rng.integers(0, len(songs), len(songs))])
        gen = rng.integers(0, len(y), len(y))
        i, j = np.triu_indices(len(rows), k=1)
        keep = rows[i] != rows[j]                 # a window drawn twice is no pair of two windows
        if len(rows) < 2 or not keep.any():
            continue
        a, b = _oa_kl(d_rr[rows[i[keep]], rows[j[keep]]], d_rg[np.ix_(rows, gen)].ravel())
        oa.append(a), kl.append(b)
    if not oa:
        return {}
    q = [50 * (1 - level), 50 * (1 + level)]
    return {"overlap_area": [float(v) for v in np.percentile(oa, q)],
            "kl_divergence": [float(v) for v in np.percentile(kl, q)]}


def compare_sets(real: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                 max_samples: int = 500, groups: np.ndarray | None = None, samples: int = 0,
                 level: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Per metric: means and stds of both sets, and OA and KL of intra-real vs inter-set distances.

    `real[name]` and `generated[name]` are [N, ...] arrays of one metric (row = sample). Sets are
    capped at `max_samples` rows (deterministic subsample) to bound the O(N^2) distances. With
    `groups` (song of each real row) and `samples` > 0: `ci95` {overlap_area, kl_divergence}, the
    bootstrap intervals over songs (see the module docstring).
    """
    out = {}
    for name in real:
        if name not in generated:
            continue
        x, y = _vectors(real[name]), _vectors(generated[name])
        if len(x) < 2 or len(y) < 1:
            continue
        rng = np.random.default_rng(seed)
        g = None if groups is None else np.asarray(groups)
        if len(x) > max_samples:
            keep = np.sort(rng.choice(len(x), max_samples, replace=False))
            x, g = x[keep], None if g is None else g[keep]
        if len(y) > max_samples:
            y = y[np.sort(rng.choice(len(y), max_samples, replace=False))]
        oa, kl = _oa_kl(intra_set_distances(x), inter_set_distances(x, y))
        out[name] = {
            "real_mean": float(x.mean()), "real_std": float(x.std()),
            "generated_mean": float(y.mean()), "generated_std": float(y.std()),
            "overlap_area": oa, "kl_divergence": kl, "zero_variance": _zero_variance(x, y),
        }
        if g is not None and samples > 0:
            out[name]["ci95"] = _bootstrap_oa_kl(x, y, g, int(samples), level, rng)
    return out


# ------------------------------------------------ the values' own distributions; the headline mean

def value_shift(x: np.ndarray, y: np.ndarray) -> dict:
    """The absolute comparison of one metric's values (rows = windows), beside the distance-based OA:
    `value_overlap`, the overlap of the KDEs of the real and the generated values (mean over the
    metric's components), and `mean_shift_sd`, |generated mean - real mean| / real std (mean over
    components whose real std is not 0; None when every component is constant in the real set).
    The relative OA compares distances and so misses a set shifted as a whole or squeezed onto the
    real set's centre; these do not."""
    x, y = _vectors(x), _vectors(y)
    overlaps, shifts = [], []
    for c in range(x.shape[1]):
        overlaps.append(_overlap(*densities(x[:, c], y[:, c])))
        sd = float(x[:, c].std())
        if sd > 0:
            shifts.append(abs(float(y[:, c].mean() - x[:, c].mean())) / sd)
    return {"value_overlap": float(np.mean(overlaps)),
            "mean_shift_sd": float(np.mean(shifts)) if shifts else None}


def constant_in_real(real: dict[str, np.ndarray]) -> list[str]:
    """Metrics whose every real value is the same: their OA says nothing about spread, so the
    headline mean leaves them out (and the report lists them apart)."""
    return [k for k, v in real.items() if len(v) and bool(np.all(_vectors(v) == _vectors(v)[0]))]


def mean_oa_with_interval(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], groups: np.ndarray,
                          samples: int = 500, level: float = 0.95, seed: int = 0, max_samples: int = 500,
                          exclude=(), bootstrap_points: int = 2000) -> dict:
    """The headline: mean relative OA over the metrics not in `exclude`, and its percentile interval
    over `samples` joint resamples (real songs with replacement, generated rows likewise, the same
    draw for every metric, so the interval is that of the mean, not of each metric). Each resample
    draws at most `bootstrap_points` pairs of rows at random (all pairs when fewer) and smooths the
    densities by FFT: 500 resamples of ~30 metrics stay a matter of seconds."""
    names = [k for k in real if k in generated and k not in exclude]
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    n_real = len(groups)
    keep_x = np.sort(rng.choice(n_real, max_samples, replace=False)) if n_real > max_samples else np.arange(n_real)
    n_gen = len(next(iter(generated.values()))) if generated else 0
    keep_y = np.sort(rng.choice(n_gen, max_samples, replace=False)) if n_gen > max_samples else np.arange(n_gen)
    if not names or len(keep_x) < 2 or len(keep_y) < 1:
        return {"mean_oa": None, "ci95": None, "metrics": names}
    g = groups[keep_x]
    d_rr, d_rg = {}, {}
    for k in names:
        x, y = _vectors(real[k])[keep_x], _vectors(generated[k])[keep_y]
        d_rr[k] = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
        d_rg[k] = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2)
    i, j = np.triu_indices(len(keep_x), k=1)
    point = float(np.mean([_overlap(*densities(d_rr[k][i, j], d_rg[k].ravel())) for k in names]))
    songs = [np.flatnonzero(g == s) for s in np.unique(g)]
    means = []
    for _ in range(int(samples)):
        rows = np.concatenate([songs[s] for s in rng.integers(0, len(songs), len(songs))])
        gen = rng.integers(0, len(keep_y), len(keep_y))
        a, b = _pairs(len(rows), len(rows), bootstrap_points, rng)
        pair = rows[a] != rows[b]                 # a window drawn twice is no pair of two windows
        c, e = _pairs(len(rows), len(gen), bootstrap_points, rng, distinct=False)
        if not pair.any():
            continue
        means.append(np.mean([_fast_overlap(d_rr[k][rows[a[pair]], rows[b[pair]]], d_rg[k][rows[c], gen[e]])
                              for k in names]))
    q = [50 * (1 - level), 50 * (1 + level)]
    ci = [float(v) for v in np.percentile(means, q)] if means else None
    return {"mean_oa": point, "ci95": ci, "metrics": names, "resamples": len(means)}


def _pairs(n: int, m: int, max_points: int, rng: np.random.Generator, distinct: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j): i < j of n rows (`distinct`) or every (i, j) of n x m; a random
    `max_points` of them (with replacement) when there are more."""
    total = n * (n - 1) // 2 if distinct else n * m
    if total <= max_points:
        return np.triu_indices(n, k=1) if distinct else np.divmod(np.arange(n * m), m)
    i, j = rng.integers(0, n, max_points), rng.integers(0, m, max_points)
    if distinct:
        i, j = np.minimum(i, j), np.maximum(i, j)
        return i[i != j], j[i != j]
    return i, j


def _fast_overlap(a: np.ndarray, b: np.ndarray, grid_size: int = 1024) -> float:
    """OA of two samples as `densities` computes it (Scott's rule, linear binning, one grid), with
    the kernel applied by FFT instead of a direct convolution: for the many resamples of a bootstrap."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    ha, hb = _bandwidth(a, hi - lo), _bandwidth(b, hi - lo)
    grid = np.linspace(lo - 5 * max(ha, hb), hi + 5 * max(ha, hb), grid_size)
    dx = float(grid[1] - grid[0])
    size = 2 * grid_size
    offsets = np.fft.rfftfreq(size, d=1.0 / size)
    pdfs = []
    for x, h in ((a, ha), (b, hb)):
        pos = np.clip((x - grid[0]) / dx, 0, grid_size - 1)
        i = np.minimum(np.floor(pos).astype(np.int64), grid_size - 2)
        w = pos - i
        counts = np.bincount(i, 1 - w, grid_size) + np.bincount(i + 1, w, grid_size)
        # a Gaussian's transform, on a circle twice the grid (no wrap-around within 5 h)
        gain = np.exp(-0.5 * (2 * np.pi * offsets / size * h / dx) ** 2)
        pdf = np.maximum(np.fft.irfft(np.fft.rfft(counts, size) * gain, size)[:grid_size], 0)
        area = np.trapezoid(pdf, grid)
        pdfs.append(pdf / area if area > 0 else pdf)
    return float(np.trapezoid(np.minimum(*pdfs), grid))
