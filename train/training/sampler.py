"""The batch sampler of the training windows: deterministic for (seed, epoch), sharded over ranks,
bucketed by meter, resumable mid-epoch (docs/data-path.md, "Sampler, sharding, resume")."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class BatchRequest(NamedTuple):
    """What the sampler yields and the dataset answers: window indices + the batch's augmentation seed."""

    indices: np.ndarray
    seed: tuple[int, ...]



class WindowBatchSampler:
    """Batches of window indices: deterministic for (seed, epoch), sharded over ranks, resumable.

    Each epoch: a permutation of all windows (numpy Generator seeded with [seed, epoch]; identity if
    not shuffle), shared by every rank. Like `DistributedSampler`, with drop_last=False it is padded
    by repeating its head to a multiple of the world size; with drop_last=True its tail is cut to
    one. Rank r takes every world-th window from position r, then cuts them into batches of
    `batch_size` (the last one smaller unless drop_last). So every rank yields the same number of
    batches, and when the number of windows divides by the world size (and drop_last=False) every
    window is seen exactly once per epoch across ranks.

    `groups` [num_windows] (e.g. each window's bar length) buckets the batches: each group is
    permuted, padded and sharded as above on its own and cut into batches, and the batches of all
    groups are then shuffled together (seeded by (seed, epoch)), so a batch never mixes groups and
    every rank still yields the same number of batches. With drop_last a group keeps its tail when
    it holds less than one batch per rank (a rare meter is never dropped whole). One group (or
    none) is exactly the plain sampler.

    `state_dict()` holds the epoch and `position` (batches of this epoch already delivered);
    `load_state_dict` + iterating again yields exactly the remaining batches of that epoch.
    `set_epoch(e)` for a new epoch starts it at 0; for the current epoch it keeps the position.
    """

    def __init__(self, num_windows: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int | None = None, rank: int | None = None,
                 groups: np.ndarray | None = None):
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = (torch.distributed.get_world_size() if dist else 1) if num_replicas is None else num_replicas
            rank = (torch.distributed.get_rank() if dist else 0) if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_windows, self.batch_size = int(num_windows), int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch, self.position = 0, 0
        self.groups = None
        if groups is not None and len(np.unique(groups)) > 1:
            self.groups = np.asarray(groups)
            if len(self.groups) != self.num_windows:
                raise ValueError(f"groups has {len(self.groups)} entries for {self.num_windows} windows")

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's windows for `epoch`, in order."""
        n, world = self.num_windows, self.num_replicas
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n, dtype=np.int64))
        per_rank = n // world if self.drop_last else -(-n // world)
        order = np.resize(order, per_rank * world) if n else order[:0]   # resize repeats the head
        return order[self.rank::world]

    def batches(self, epoch: int) -> list[np.ndarray]:
        if self.groups is None:
            mine = self.rank_indices(epoch)
            return self._cut(mine, self._batch_count(self.num_windows))
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_windows) if self.shuffle
                 else np.arange(self.num_windows, dtype=np.int64))
        out = []
        for g in np.unique(self.groups):
            members = order[self.groups[order] == g]                       # in the epoch's order
            per_rank, count = self._shares(len(members))
            out += self._cut(np.resize(members, per_rank * self.num_replicas)[self.rank::self.num_replicas], count)
        if self.shuffle:     # the same permutation on every rank: their groups' batch counts agree
            out = [out[i] for i in np.random.default_rng([self.seed, epoch, 1]).permutation(len(out))]
        return out

    def _shares(self, n: int) -> tuple[int, int]:
        """(windows per rank, batches per rank) of n windows; with drop_last, a group holding less
        than one batch per rank keeps them (plain sampler: `_batch_count`)."""
        world, bs = self.num_replicas, self.batch_size
        short = self.groups is not None and n < world * bs
        per_rank = n // world if self.drop_last and not short else -(-n // world)
        return per_rank, (per_rank // bs if self.drop_last and not short else -(-per_rank // bs))

    def _batch_count(self, n: int) -> int:
        return self._shares(n)[1]

    def _cut(self, mine: np.ndarray, count: int) -> list[np.ndarray]:
        return [mine[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count)]

    def __len__(self) -> int:
        if self.groups is None:
            return self._batch_count(self.num_windows)
        return sum(self._batch_count(int(n)) for n in np.unique(self.groups, return_counts=True)[1])

    def start_position(self) -> int:
        """Where the next iteration begins: the saved position mid-epoch, else 0."""
        return self.position if 0 < self.position < len(self) else 0

    def __iter__(self):
        batches = self.batches(self.epoch)
        for n in range(self.start_position(), len(batches)):
            self.position = n + 1
            yield BatchRequest(batches[n], (self.seed, self.epoch, self.rank, n))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, int | bool]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_windows": self.num_windows, "batch_size": self.batch_size,
                "num_replicas": self.num_replicas, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_windows", "batch_size", "num_replicas", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}: "
                                 "a run resumes mid-epoch only with the same data, batch size and world size")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
