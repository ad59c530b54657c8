"""Classifier two-sample test: can a classifier tell one set of windows from another?

Two judges, each trained and scored by k-fold cross-validation whose folds are split by group (a
song: windows of one song are never on both sides of a split, so a judge cannot win by recognising
a song), on classes of equal size (the larger side subsampled), so that chance is 0.5:

- texture: a small 1-D CNN (torch, CPU) over each window's hits, velocities and offsets, step by
  step (what a bar sounds like);
- form: a logistic regression (numpy, L2, Newton steps) on each window's bar self-similarity
  matrix (Jaccard of the hit sets of every pair of bars: how the bars repeat and vary).

The figure is the held-out accuracy with a 95% interval (bootstrap over the groups of the
held-out predictions): 0.5 = indistinguishable, 1.0 = always told apart. A difference is only read
against the floor (two real samples: the accuracy a judge reaches on no difference) and the power
rows (real windows with a known defect: what the judge can see).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sample:
    """Windows of one side: hits [N, L, D] (0/1), velocity [N, L, D] (0..127), offset [N, L, D]
    (the store's units), group [N] (song id; generated windows each their own)."""

    hits: np.ndarray
    velocity: np.ndarray
    offset: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.hits)

    def take(self, rows: np.ndarray) -> "Sample":
        return Sample(self.hits[rows], self.velocity[rows], self.offset[rows], self.group[rows])


def stack_windows(rolls: list[np.ndarray], played: list | None, groups, length: int) -> Sample:
    """A Sample of `rolls` ([T, D] each, T <= length, zero-padded to `length`) with their
    (velocity, offset) arrays (None: velocity 100 on every hit, offset 0)."""
    n, d = len(rolls), (rolls[0].shape[1] if rolls else 0)
    hits, vel, off = (np.zeros((n, length, d), np.float32) for _ in range(3))
    for i, r in enumerate(rolls):
        t = min(len(r), length)
        hits[i, :t] = np.asarray(r[:t]) > 0
        v, o = played[i] if played is not None else (100 * hits[i, :t], np.zeros_like(hits[i, :t]))
        vel[i, :t] = np.asarray(v[:t]) * hits[i, :t]
        off[i, :t] = np.asarray(o[:t]) * hits[i, :t]
    return Sample(hits, vel, off, np.asarray(groups))


def shuffle_bars(s: Sample, steps_per_bar: int, seed: int = 0) -> Sample:
    """Power row: each window's whole bars put in a random order (hits, velocities, offsets alike)."""
    rng = np.random.default_rng(seed)
    nb = s.hits.shape[1] // steps_per_bar
    out = [a.copy() for a in (s.hits, s.velocity, s.offset)]
    for i in range(len(s)):
        order = (rng.permutation(nb)[:, None] * steps_per_bar + np.arange(steps_per_bar)).ravel()
        for a, src in zip(out, (s.hits, s.velocity, s.offset)):
            a[i, :nb * steps_per_bar] = src[i, order]
    return Sample(*out, s.group)


def drop_hits(s: Sample, share: float = 0.2, seed: int = 0) -> Sample:
    """Power row: `share` of each window's hits removed at random (their velocity and offset too)."""
    keep = np.random.default_rng(seed).random(s.hits.shape) >= share
    return Sample(s.hits * keep, s.velocity * keep, s.offset * keep, s.group)


def bar_self_similarity(hits: np.ndarray, steps_per_bar: int) -> np.ndarray:
    """[N, B*(B-1)/2]: the Jaccard similarity of every pair of bars' hit sets (1 where both are silent)."""
    n, L, _ = hits.shape
    nb = L // steps_per_bar
    bars = (hits[:, :nb * steps_per_bar] > 0).reshape(n, nb, -1).astype(np.float32)
    inter = bars @ bars.transpose(0, 2, 1)
    size = bars.sum(2)
    union = size[:, :, None] + size[:, None, :] - inter
    sim = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    i, j = np.triu_indices(nb, k=1)
    return sim[:, i, j]


def fold_of_groups(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each row: its group's, groups dealt round-robin in a seeded random order."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), np.int64)
    fold_of_group[order] = np.arange(len(uniq)) % folds
    return fold_of_group[inverse.ravel()]


def _class_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights that give both classes the same total weight (no prior to learn)."""
    pos = max(float(y.sum()), 1.0)
    neg = max(float(len(y) - y.sum()), 1.0)
    return np.where(y > 0.5, len(y) / (2 * pos), len(y) / (2 * neg))


def logistic_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1.0,
                         steps: int = 25) -> np.ndarray:
    """P(class 1) of x_test from an L2-regularised logistic regression fitted by Newton's method
    (features standardised on the training rows)."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    a = np.hstack([(x_train - mu) / sd, np.ones((len(x_train), 1))])
    b = np.hstack([(x_test - mu) / sd, np.ones((len(x_test), 1))])
    w = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2)
    reg[-1] = 0.0                                        # the intercept is not shrunk
    weight = _class_weights(y_train)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (weight * (p - y_train)) + reg * w
        hess = (a * (weight * p * (1 - p))[:, None]).T @ a + np.diag(reg + 1e-9)
        w -= np.linalg.solve(hess, grad)
    return 1.0 / (1.0 + np.exp(-np.clip(b @ w, -30, 30)))


class _Texture(torch.nn.Module):
    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv1d(channels, width, 4, stride=2), torch.nn.ReLU(),
            torch.nn.Conv1d(width, width, 4, stride=2), torch.nn.ReLU())
        self.out = torch.nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return self.out(torch.cat([h.mean(2), h.amax(2)], 1)).squeeze(1)


def texture_inputs(s: Sample) -> np.ndarray:
    """[N, 3D, L]: hits, velocity / 127 and offset scaled to unit spread (over the played hits)."""
    spread = float(s.offset[s.hits > 0].std()) if (s.hits > 0).any() else 1.0
    x = np.concatenate([s.hits, s.velocity / 127.0, s.offset / (spread if spread > 0 else 1.0)], 2)
    return x.transpose(0, 2, 1).astype(np.float32)


def cnn_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, steps: int = 200,
                    batch: int = 64, seed: int = 0) -> np.ndarray:
    """P(class 1) of x_test from the texture CNN trained on (x_train, y_train) by `steps` Adam steps
    on random batches (a number of steps, not epochs: a small set gets as much training as a big one)."""
    torch.manual_seed(seed)
    model = _Texture(x_train.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    wt = torch.from_numpy(_class_weights(y_train).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx], weight=wt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x_test))).numpy()


def _balanced(a: Sample, b: Sample, max_per_side: int, seed: int) -> tuple[Sample, Sample]:
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_per_side)
    pick = [np.sort(rng.choice(len(s), n, replace=False)) for s in (a, b)]
    return a.take(pick[0]), b.take(pick[1])


def _accuracy_interval(correct: np.ndarray, groups: np.ndarray, samples: int, level: float, seed: int
                       ) -> list[float]:
    """Percentile interval of the held-out accuracy, groups resampled with replacement."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    hits = np.bincount(inverse.ravel(), correct.astype(np.float64), len(uniq))
    sizes = np.bincount(inverse.ravel(), minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), (samples, len(uniq)))
    acc = hits[draws].sum(1) / sizes[draws].sum(1)
    q = [50 * (1 - level), 50 * (1 + level)]
    return [float(v) for v in np.percentile(acc, q)]


def two_sample_test(a: Sample, b: Sample, steps_per_bar: int, *, folds: int = 5, max_per_side: int = 256,
                    steps: int = 200, samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Held-out accuracy (and its interval) of the texture and form judges telling `a` from `b`.

    Groups of `a` and `b` must not share ids (prefix them apart before calling if they may)."""
    a, b = _balanced(a, b, max_per_side, seed)
    n = len(a)
    if n < 2 or len(np.unique(np.concatenate([a.group, b.group]))) < folds:
        return {"windows_per_side": n, "texture": None, "form": None}
    y = np.r_[np.zeros(n), np.ones(n)]
    groups = np.concatenate([np.char.add("a:", a.group.astype(str)), np.char.add("b:", b.group.astype(str))])
    # folds dealt per class, so each fold holds both classes about equally (a fold short of one
    # class would teach its training rows the other class's prior: accuracy below chance)
    fold = np.r_[fold_of_groups(groups[:n], folds, seed), fold_of_groups(groups[n:], folds, seed + 1)]
    both = Sample(*(np.concatenate([u, v]) for u, v in zip((a.hits, a.velocity, a.offset),
                                                            (b.hits, b.velocity, b.offset))), groups)
    features = {"texture": texture_inputs(both), "form": bar_self_similarity(both.hits, steps_per_bar)}
    out = {"windows_per_side": n, "folds": folds}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # a small net: more threads only contend on a shared machine
    try:
        for name, x in features.items():
            p = np.zeros(2 * n)
            for k in range(folds):
                test, train = fold == k, fold != k
                if not test.any() or len(np.unique(y[train])) < 2:
                    continue
                fit = cnn_fit_predict if name == "texture" else logistic_fit_predict
                kw = {"steps": steps, "seed": seed + k} if name == "texture" else {}
                p[test] = fit(x[train], y[train], x[test], **kw)
            correct = (p >= 0.5) == (y == 1)
            out[name] = {"accuracy": float(correct.mean()),
                         "ci95": _accuracy_interval(correct, groups, samples, level, seed)}
    finally:
        torch.set_num_threads(threads)
    return out
