"""What a window-metric family declares: its metrics (name, dtype, shape, doc) and how it fills them.

A family is one module (kernels/rhythm.py, kernels/structure.py, kernels/playing.py) that computes a
group of window metrics from one song in its own pass. It declares a `Family`; `kernels.families`
registers it by name; the driver (`kernels.window`) checks the inputs, allocates every declared
array and hands the family a `SongWindows` (the song and its windows) and its outputs as a
namedtuple, so compiled code writes `out.avg_hits[w] = ...`: by name, never by position.
docs/metrics.md, "Adding a window metric", walks through adding one.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

# The trailing dimensions a metric's shape may name (ints are fixed sizes):
#   drums      D, the kit's drums
#   bars       the bar_hits columns (seq_len // steps_per_bar by default)
#   ioi_bins   the ioi_hist bins (steps_per_bar by default)
#   positions  the accent columns, bar positions (steps_per_bar by default)
DIMS = ("drums", "bars", "ioi_bins", "positions")


@dataclass(frozen=True)
class Metric:
    """One window metric, stored as window/<name> with shape [W, *shape] and this dtype."""

    name: str
    dtype: str
    shape: tuple = ()
    doc: str = ""

    def __post_init__(self):
        bad = [s for s in self.shape if not (isinstance(s, int) or s in DIMS)]
        if bad:
            raise ValueError(f"metric {self.name}: shape entries {bad} are neither ints nor one of {DIMS}")
        np.dtype(self.dtype)

    def trailing(self, dims: dict) -> tuple:
        """The trailing shape for these dimension sizes, e.g. {'drums': 9, 'bars': 16, ...}."""
        return tuple(s if isinstance(s, int) else int(dims[s]) for s in self.shape)


@dataclass
class SongWindows:
    """One song and its windows, checked by the driver; what every family's `fill` reads.

    velocity / offset are None unless a family that needs them is computed."""

    hits: np.ndarray            # uint8 [T, D] of 0/1
    starts: np.ndarray          # int64 [W] window starts (kernels.spec.window_grid)
    L: int                      # window length
    stride: int
    steps_per_bar: int
    beat: int                   # steps per beat
    bars_per_phrase: int
    ngram_n: int
    fast_threshold: int
    dense_threshold: float      # resolved (D / 2 by default)
    velocity: np.ndarray | None = None    # int16 [T, D]
    offset: np.ndarray | None = None      # int16 [T, D], 1/128 step


@dataclass(frozen=True)
class Family:
    """A group of window metrics computed together in one pass over a song.

    inputs: the per-step arrays it reads ("hits", and "velocity", "offset" for the playing family).
    fill(song: SongWindows, out): writes every metric of every window into out (the namedtuple
    `outputs_type`, fields = metric names; arrays preallocated with zeros)."""

    name: str
    doc: str
    metrics: tuple[Metric, ...]
    inputs: tuple[str, ...]
    fill: Callable
    outputs_type: type

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)


def outputs_type(type_name: str, metrics: tuple[Metric, ...], module: str) -> type:
    """The namedtuple a family's kernels receive. Define it at module level under `type_name` in
    `module`, so numba's on-disk cache can find the class again."""
    return namedtuple(type_name, [m.name for m in metrics], module=module)
