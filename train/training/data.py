"""Training windows read straight from memory-mapped arrays: dataset, batch sampler, collate, loader.

The trainer never parses or computes here: `data/ready/` (written by `pipeline.export`) holds the
store's rows and the precomputed window metrics as `.npy` files. A batch is one fancy-index gather
of `[B, seq_len]` rows from the mapped arrays plus one gather per metric, no per-item Python loop:

    loader = make_loader(dataset, batch_size=64, num_workers=2)    # 2 prefetch threads; sampler: loader.sampler
    # which is DataLoader(dataset, batch_size=None, sampler=WindowBatchSampler(len(dataset), 64),
    #                     collate_fn=collate) plus exact resume

A batch (dict of tensors, B first) holds only what was asked for: always
    step     float32 [B, L, D]       hits 0/1, zero on padding
    mask     bool    [B, L]          True on real steps (a song shorter than L is padded, never dropped)
    metrics  dict name -> [B, ...]   the window metrics asked for (`metrics=`; default: all exported)
    song, start  int64 [B]           store song index and song-relative first step
    steps_per_bar int64 [B]          each window's song's bar length (its meter; one value per
                                     batch of `make_loader`, which buckets batches by meter)
and with `fields=("velocity", "offset")` / `levels=("bar", "phrase", "song")`:
    velocity uint8   [B, L, D]       MIDI velocity 1..127 of each hit, 0 elsewhere
    offset   int8    [B, L, D]       timing of each hit in 1/128 step (ready/offset.npy), 0 elsewhere
    bar      float32 [B, L//spb, D]  mean of each spb steps from the window's first (padding counts as silence), + bar_mask
    phrase   float32 [B, L//(spb·bpp), D]                                                   + phrase_mask
    song_metrics  dict name -> [B, ...]  the window's song's row of metrics.zarr song/<name>
and with `conditions={name: labels}` (a conditioned model's vocabulary, train/training/conditioning.py):
    cond     int64   [B, C]          the window's song's condition ids (0 = none / unseen label)
"""
from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numba import njit
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

ROW, SONG, START, LENGTH, OFFSET = range(5)   # columns of windows_<split>.npy (pipeline.export)


class BatchRequest(NamedTuple):
    """What the sampler yields and the dataset answers: window indices + the batch's augmentation seed."""

    indices: np.ndarray
    seed: tuple[int, ...]


def resolve_ready_dir(path: str | Path) -> Path:
    """`data/ready` itself, or a `store.zarr` whose export sits beside it in `ready/`."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return path
    if (path / "zarr.json").exists():
        ready = path.parent / "ready"
        if (ready / "manifest.json").exists():
            _check_store_hash(path, ready)
            return ready
        raise FileNotFoundError(f"{path}: store has no export at {ready} (run `dvc repro export`)")
    raise FileNotFoundError(f"{path}: neither an export (manifest.json) nor a Zarr store")


def _check_store_hash(store: Path, ready: Path) -> None:
    from pipeline.store import Store

    current = Store(store).hash
    manifest = json.loads((ready / "manifest.json").read_text())
    if current != manifest.get("store_hash", ""):
        raise ValueError(f"{ready}: exported from a store with hash {manifest.get('store_hash')!r}, "
                         f"but {store} has {current!r}; rerun `dvc repro export`")


class CompleteHierarchicalDrumDataset(Dataset):
    """The windows of one split, with their stored metrics; `ds[i]` an item, `ds[[i, j, …]]` a batch.

    Windows are exactly the metric windows (`seq_len`, `stride` must equal those the metrics stage
    used; checked here). Songs of every bar length are read: each window carries its song's
    (`steps_per_bar` in the batch, `window_bar_lengths`), and `make_loader` puts windows of one bar
    length in a batch. Maps open lazily, once per process, so the dataset pickles small for
    DataLoader workers.

    augment: each window is replaced by a stored window of the same song shifted by a whole number
    of bars (at most `max_shift_bars`), so bar phase and stored metrics stay right and nothing wraps;
    `velocity_jitter` > 0 scales each hit's velocity by exp(N(0, jitter)), clipped to 1..127, so
    the hits themselves never change. Randomness comes from the batch's seed (the sampler derives
    it from seed, epoch, rank and batch number), so it does not depend on which worker runs it.
    """

    def __init__(self, store: str | Path, split: str = "train", seq_len: int = 256,
                 stride: int | None = None, steps_per_bar: int = 16, bars_per_phrase: int = 4,
                 augment: bool = False, *, max_shift_bars: int | None = None,
                 velocity_jitter: float = 0.0, seed: int = 0, metrics: list[str] | None = None,
                 fields: tuple[str, ...] = (), levels: tuple[str, ...] = (),
                 conditions: dict[str, list[str]] | None = None, bpm_buckets: tuple[float, ...] = ()):
        self.ready = resolve_ready_dir(store)
        manifest = json.loads((self.ready / "manifest.json").read_text())
        if split not in manifest["windows"]:
            raise ValueError(f"{self.ready}: no split {split!r} (have {sorted(manifest['windows'])})")
        stride = int(manifest["stride"]) if stride is None else int(stride)
        if (int(manifest["seq_len"]), int(manifest["stride"])) != (int(seq_len), stride):
            raise ValueError(f"{self.ready}: metrics were computed with seq_len={manifest['seq_len']}, "
                             f"stride={manifest['stride']}; requested seq_len={seq_len}, stride={stride}. "
                             "Set window.seq_len/window.stride to match or rerun `dvc repro metrics export`")
        if seq_len < steps_per_bar * bars_per_phrase or seq_len % steps_per_bar:
            raise ValueError(f"seq_len={seq_len} must be a multiple of steps_per_bar={steps_per_bar} "
                             f"and hold at least one phrase ({steps_per_bar * bars_per_phrase} steps)")
        self.split, self.seq_len, self.stride = split, int(seq_len), stride
        self.steps_per_bar, self.bars_per_phrase = int(steps_per_bar), int(bars_per_phrase)
        self.augment, self.velocity_jitter, self.seed = bool(augment), float(velocity_jitter), int(seed)
        self.max_shift_bars = int(bars_per_phrase if max_shift_bars is None else max_shift_bars)
        self.manifest = manifest
        exported = list(manifest["metric_names"])
        self.metric_names = exported if metrics is None else list(metrics)
        missing = [n for n in self.metric_names if n not in exported]
        if missing:
            raise ValueError(f"{self.ready}: window metrics {missing} were not exported (it holds {exported}); "
                             "add them to export.metrics and rerun `dvc repro export`")
        self.fields, self.levels = tuple(fields), tuple(levels)
        for name, value, allowed in (("fields", self.fields, FIELDS), ("levels", self.levels, LEVELS)):
            if set(value) - set(allowed):
                raise ValueError(f"{name} {sorted(set(value) - set(allowed))} unknown; choose from {allowed}")
        self.drum_names = list(manifest["drum_names"])
        self.conditions, self.bpm_buckets = dict(conditions or {}), tuple(bpm_buckets)
        self._maps: dict[str, Any] | None = None
        maps = self._open()
        self._len = len(maps["table"])

    # -- maps, opened once per process ---------------------------------------------------------
    def _open(self) -> dict[str, Any]:
        if self._maps is None:
            load = lambda name: np.load(self.ready / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
            table = np.load(self.ready / f"windows_{self.split}.npy", allow_pickle=False)
            spb = np.load(self.ready / "song_steps_per_bar.npy", allow_pickle=False)
            # Windows of one song are contiguous: [first, last] table position of each window's song.
            new_song = np.r_[True, table[1:, SONG] != table[:-1, SONG]] if len(table) else np.zeros(0, bool)
            first = np.maximum.accumulate(np.where(new_song, np.arange(len(table)), 0))
            end_song = np.r_[table[1:, SONG] != table[:-1, SONG], True] if len(table) else new_song
            last = np.minimum.accumulate(np.where(end_song, np.arange(len(table)), len(table))[::-1])[::-1]
            self._maps = {
                "hits": load("hits.npy"), "table": table, "first": first, "last": last,
                "metrics": {n: load(f"metrics/{n}.npy") for n in self.metric_names},
                "bar": spb[table[:, SONG]].astype(np.int64),     # each window's bar length
            }
            if "velocity" in self.fields:
                self._maps["velocity"] = load("velocity.npy")
            if "offset" in self.fields:
                self._maps["offset"] = self._load_offset(load)
            if "song" in self.levels:
                self._maps["song_metrics"] = self._song_table()
            if self.conditions:
                from train.training.conditioning import read_song_labels, song_ids
                self._maps["cond"] = song_ids(self.conditions, read_song_labels(self.ready), self.bpm_buckets)
        return self._maps

    def _load_offset(self, load):
        if not (self.ready / "offset.npy").exists():
            raise FileNotFoundError(f"{self.ready}: no offset.npy (exported before timing offsets were "
                                    "stored); rebuild: `dvc repro` (or python -m pipeline, then export)")
        return load("offset.npy")

    def _song_table(self) -> dict[str, np.ndarray]:
        """metrics.zarr song/<name>, [S, ...] each: small (one row per song), read into memory."""
        import zarr

        from pipeline.ready_paths import recorded

        path = recorded(self.ready, self.manifest, "metrics_store")
        if not (path / "zarr.json").exists():
            path = self.ready.parent / path.name         # the export moved with its data folder
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.ready}: levels=('song',) reads song metrics from "
                                    f"{self.manifest.get('metrics_store')!r}, which is not there")
        grp = zarr.open_group(str(path), mode="r")["song"]
        return {name: grp[name][:] for name in sorted(grp.array_keys())}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None   # a copy (another process) maps the files itself: nothing big is pickled
        return state

    def __len__(self) -> int:
        return self._len

    @property
    def num_drums(self) -> int:
        return len(self.drum_names)

    @property
    def window_bar_lengths(self) -> np.ndarray:
        """[W] the bar length (steps_per_bar) of each window's song: its meter."""
        return self._open()["bar"]

    @property
    def bar_lengths(self) -> list[int]:
        """The bar lengths this split holds, ascending."""
        return [int(b) for b in np.unique(self.window_bar_lengths)]

    @property
    def has_timing(self) -> bool:
        """Whether any hit of the export is off the grid (ready/offset.npy not all 0): quantised
        data (the built-in corpus, quantised MIDI) has no timing for a model to learn or play."""
        path = self.ready / "offset.npy"
        if not path.exists():
            return False
        offsets = np.load(path, mmap_mode="r", allow_pickle=False)
        step = 1 << 22   # rows per read: the scan stops at the first off-grid hit, memory stays flat
        return any(np.any(offsets[a:a + step]) for a in range(0, len(offsets), step))

    @property
    def windows(self) -> np.ndarray:
        """This split's window table [W, 5] (columns ROW, SONG, START, LENGTH, OFFSET)."""
        return self._open()["table"]

    # -- indexing ------------------------------------------------------------------------------
    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            batch = self.get_batch(np.array([int(key)]), seed=(self.seed, int(key)))
            return {k: _first(v) for k, v in batch.items()}
        if isinstance(key, BatchRequest):
            return self.get_batch(np.asarray(key.indices, np.int64), seed=key.seed)
        idx = np.asarray(key, np.int64)
        return self.get_batch(idx, seed=(self.seed, *idx.tolist()))

    def __getitems__(self, indices: list[int]):
        """Batch fetch for `DataLoader(batch_sampler=…)`: the whole batch in one gather."""
        return self[list(indices)]

    def get_batch(self, idx: np.ndarray, seed: tuple[int, ...] = (0,)) -> dict[str, Any]:
        """The batch of windows `idx` as a dict of tensors (see the module docstring).

        One compiled pass copies each window's contiguous rows into step (and velocity) and fills
        the mask; bar/phrase means are two reshapes of step; metrics are one `np.take` of rows per
        metric. Nothing is gathered that was not asked for.
        """
        m = self._open()
        n = len(m["table"])
        idx = np.asarray(idx, np.int64)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for {n} windows of split {self.split!r}")
        idx = idx % max(n, 1)
        rng = np.random.default_rng(list(seed)) if self.augment else None
        if rng is not None:
            idx = self._shift(idx, rng, m)
        t = m["table"][idx].astype(np.int64)
        B, L, D = len(idx), self.seq_len, self.num_drums
        step = np.empty((B, L, D), np.float32)
        mask = np.empty((B, L), np.bool_)
        want_vel = "velocity" in self.fields
        vel = np.empty((B, L, D) if want_vel else (0, L, D), np.uint8)
        _gather_windows(m["hits"], m.get("velocity", m["hits"]), t[:, OFFSET].copy(), t[:, LENGTH].copy(),
                        step, vel, mask)
        out: dict[str, Any] = {"step": torch.from_numpy(step), "mask": torch.from_numpy(mask),
                               "song": torch.from_numpy(t[:, SONG].copy()),
                               "start": torch.from_numpy(t[:, START].copy()),
                               "steps_per_bar": torch.from_numpy(m["bar"][idx])}
        if want_vel:
            if rng is not None and self.velocity_jitter > 0:
                vel[:] = _jitter(vel, step, rng, self.velocity_jitter)
            out["velocity"] = torch.from_numpy(vel)
        if "offset" in self.fields:   # timing of each hit in 1/128 step; 0 on rests and padding
            rows = np.where(mask, t[:, OFFSET, None] + np.arange(L), 0)
            out["offset"] = torch.from_numpy(np.where(mask[..., None], m["offset"][rows], 0).astype(np.int8))
        self._levels(out, step, t)
        if self.conditions:
            out["cond"] = torch.from_numpy(m["cond"][t[:, SONG]])
        out["metrics"] = {name: torch.from_numpy(_take(arr, t[:, ROW])) for name, arr in m["metrics"].items()}
        return out

    def _levels(self, out: dict, step: np.ndarray, t: np.ndarray) -> None:
        """The levels asked for: bar/phrase means of the gathered steps (+ masks), song metrics."""
        B, L, D = step.shape
        bpp = self.bars_per_phrase
        length = t[:, LENGTH, None]
        if "bar" in self.levels or "phrase" in self.levels:
            spb = self._batch_bar_length(out["steps_per_bar"].numpy())
            bar = step[:, :L // spb * spb].reshape(B, L // spb, spb, D).mean(2, dtype=np.float32)
            if "bar" in self.levels:
                out["bar"] = torch.from_numpy(bar)
                out["bar_mask"] = torch.from_numpy((np.arange(1, L // spb + 1) * spb)[None, :] <= length)
            if "phrase" in self.levels:
                nph = L // (spb * bpp)
                phrase = bar[:, :nph * bpp].reshape(B, nph, bpp, D).mean(2, dtype=np.float32)
                out["phrase"] = torch.from_numpy(phrase)
                out["phrase_mask"] = torch.from_numpy((np.arange(1, nph + 1) * spb * bpp)[None, :] <= length)
        if "song" in self.levels:
            out["song_metrics"] = {name: torch.from_numpy(_take(arr, t[:, SONG]))
                                   for name, arr in self._open()["song_metrics"].items()}

    def _batch_bar_length(self, bars: np.ndarray) -> int:
        values = np.unique(bars)
        if len(values) > 1:
            raise ValueError(f"levels bar/phrase: this batch mixes bar lengths {values.tolist()}; "
                             "take batches from make_loader (one meter per batch)")
        return int(values[0]) if len(values) else self.steps_per_bar

    def _shift(self, idx: np.ndarray, rng: np.random.Generator, m: dict) -> np.ndarray:
        """Whole-bar re-windowing: another stored window of the same song, k bar-units away
        (each window's own bar: a shift never moves a song's bar lines)."""
        bar = m["bar"][idx]
        unit = np.lcm(bar, self.stride)                          # steps: whole bars and whole strides
        max_units = self.max_shift_bars * bar // unit            # |shift| ≤ max_shift_bars bars
        if len(np.unique(max_units)) <= 1:    # one meter per batch (make_loader): one draw
            mu = int(max_units[0]) if len(idx) else 0
            if mu == 0:
                return idx
            k = rng.integers(-mu, mu + 1, size=len(idx))
        else:                                 # a hand-picked batch of several meters
            k = rng.integers(-max_units, max_units + 1)
        j = idx + k * (unit // self.stride)
        ok = (j >= m["first"][idx]) & (j <= m["last"][idx])
        return np.where(ok, j, idx)


FIELDS = ("velocity", "offset")          # per-step arrays a batch may add to `step`
LEVELS = ("bar", "phrase", "song")        # coarser levels a batch may carry (metrics: window level)

# numpy dtypes torch handles as they are; other unsigned ones widen to a signed type (torch's
# uint16/uint32 support few ops), e.g. bar_hits uint16 -> int32.
_WIDEN = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64}


def _take(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a (mapped) metric array, as a dtype torch takes."""
    out = np.take(arr, rows, axis=0)
    return out.astype(_WIDEN[out.dtype]) if out.dtype in _WIDEN else out


@njit(cache=True, nogil=True)
def _gather_windows(hits, velocity, offsets, lengths, step, vel, mask):
    """Copy window b = rows offsets[b] : offsets[b] + lengths[b] into step (and vel when it has
    rows: velocity was asked for), zero padding after; mask marks the real steps."""
    B, L, D = step.shape
    want_vel = vel.shape[0] > 0
    for b in range(B):
        a, n = offsets[b], lengths[b]
        for t in range(L):
            real = t < n
            mask[b, t] = real
            for d in range(D):
                step[b, t, d] = hits[a + t, d] if real else 0
                if want_vel:
                    vel[b, t, d] = velocity[a + t, d] if real else 0


def _jitter(vel: np.ndarray, hits: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    scale = np.exp(rng.normal(0.0, sigma, size=vel.shape)).astype(np.float32)
    out = np.clip(np.rint(vel * scale), 1, 127).astype(np.uint8)
    return np.where(hits > 0, out, 0).astype(np.uint8)


def _first(v):
    return {k: x[0] for k, x in v.items()} if isinstance(v, dict) else v[0]


def collate(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch dict -> flat tensors (metrics stay a flat dict name -> tensor); tensors pass as they are."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = collate(v)
        elif isinstance(v, torch.Tensor):
            out[k] = v
        else:
            a = np.asarray(v)
            out[k] = torch.from_numpy(a if a.flags.c_contiguous else a.copy())
    return out


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


class WindowLoader(DataLoader):
    """A DataLoader over a WindowBatchSampler that keeps the sampler's position honest.

    Workers fetch ahead of the training loop, so the sampler alone would count prefetched batches
    as seen; this loader sets `sampler.position` to the batches actually delivered, so a
    checkpoint taken between batches resumes with exactly the unseen windows.

    `num_workers` threads of this process prefetch the next `num_workers * prefetch_factor`
    batches. The gather is a numba kernel compiled `nogil=True`, so threads overlap with the
    training loop and nothing crosses a process boundary. (Process workers were measured to buy
    nothing here — benchmarks/README.md "Loader" — and were removed; 0 workers is the default.)
    """

    def __init__(self, dataset, *, num_workers: int = 0, prefetch_factor: int | None = None, **kwargs):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.workers = int(num_workers)
        self.prefetch_factor_threads = int(prefetch_factor or 2)
        kwargs.pop("persistent_workers", None)
        super().__init__(dataset, num_workers=0, **kwargs)   # torch's loop runs here; threads are ours

    @property
    def threaded(self) -> bool:
        return self.workers > 0

    def __iter__(self):
        sampler = self.sampler
        start = sampler.start_position()
        batches = self._thread_batches() if self.threaded else super().__iter__()
        for n, batch in enumerate(batches, start=1):
            sampler.position = start + n
            yield batch

    def _fetch(self, request):
        batch = self.collate_fn(self.dataset[request])
        return _pin(batch) if self.pin_memory and torch.cuda.is_available() else batch

    def _thread_batches(self):
        """The sampler's batches in order, each gathered on a pool thread, `depth` in flight."""
        if hasattr(self.dataset, "_open"):
            self.dataset._open()            # map the files once, before threads race to do it
        requests = iter(self.sampler)
        depth = self.workers * self.prefetch_factor_threads
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="WindowLoader")
        pending: deque = deque()
        try:
            pending.extend(pool.submit(self._fetch, r) for r in itertools.islice(requests, depth))
            while pending:
                batch = pending.popleft().result()
                pending.extend(pool.submit(self._fetch, r) for r in itertools.islice(requests, 1))
                yield batch
        finally:            # end of epoch, a break (generator closed) or an exception: join the threads
            pool.shutdown(wait=True, cancel_futures=True)


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: _pin(v) if isinstance(v, dict) else v.pin_memory() for k, v in batch.items()}


def make_loader(dataset: CompleteHierarchicalDrumDataset, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, drop_last: bool = False, num_workers: int = 0,
                pin_memory: bool = False, num_replicas: int | None = None, rank: int | None = None,
                **kwargs) -> WindowLoader:
    """The loader the trainer uses: one gather per batch, sharded and resumable (`loader.sampler`).

    num_workers prefetching threads; see WindowLoader. Batches are bucketed by the windows' bar
    length (their songs' meter), so each batch runs the model on one bar grid.
    """
    sampler = WindowBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                 num_replicas=num_replicas, rank=rank,
                                 groups=getattr(dataset, "window_bar_lengths", None))   # one meter per batch
    return WindowLoader(dataset, batch_size=None, sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, pin_memory=pin_memory, **kwargs)


def get_complete_rl_dataloader(npz_dir_or_store: str | Path, seq_len: int = 512, steps_per_bar: int = 16,
                               bars_per_phrase: int = 4, batch_size: int = 16, shuffle: bool = True,
                               augment: bool = False, num_workers: int = 0, *, split: str = "train",
                               stride: int | None = None, seed: int = 0, drop_last: bool = False,
                               cache_dir: str | Path | None = None, **dataset_kwargs) -> WindowLoader:
    """The seed's one-call entry point: a loader of hierarchical batches from an NPZ folder or a store.

    `npz_dir_or_store`: a folder of *.npz rolls (built once through ingest -> build -> metrics ->
    export, then cached, see `prepare_npz`), a `store.zarr` with its export beside it, or an export
    folder (`data/ready`). `stride` defaults to the export's (one bar for an NPZ folder).
    Shards over torch.distributed ranks when a process group is initialised.
    """
    path = Path(npz_dir_or_store)
    if path.is_dir() and not (path / "manifest.json").exists() and not (path / "zarr.json").exists():
        if not any(path.rglob("*.npz")):
            raise FileNotFoundError(f"{path}: no *.npz files, no store.zarr and no export (manifest.json)")
        from pipeline.stages import prepare_npz

        path = prepare_npz(path, seq_len=seq_len, stride=stride or steps_per_bar, steps_per_bar=steps_per_bar,
                           bars_per_phrase=bars_per_phrase, cache_dir=cache_dir)
    dataset = CompleteHierarchicalDrumDataset(path, split, seq_len, stride, steps_per_bar, bars_per_phrase,
                                              augment, seed=seed, **dataset_kwargs)
    return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                       num_workers=num_workers)
