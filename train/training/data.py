"""Training windows read straight from memory-mapped arrays: dataset, batch sampler, collate, loader.

The trainer never parses or computes here: `data/ready/` (written by `pipeline.export`) holds the
store's rows and the precomputed window metrics as `.npy` files. A batch is one fancy-index gather
of `[B, seq_len]` rows from the mapped arrays plus one gather per metric, no per-item Python loop:

    loader = make_loader(dataset, batch_size=64, num_workers=2)    # 2 prefetch threads; sampler: loader.sampler
    # which is DataLoader(dataset, batch_size=None, sampler=WindowBatchSampler(len(dataset), 64),
    #                     collate_fn=collate) plus one-buffer hand-over from workers and exact resume

A batch (dict of tensors, B first):
    step     float32 [B, L, D]       hits 0/1, zero on padding
    velocity uint8   [B, L, D]       MIDI velocity 1..127 of each hit, 0 elsewhere
    offset   int8    [B, L, D]       timing of each hit in 1/128 step (ready/offset.npy), 0 elsewhere
    bar      float32 [B, L//spb, D]  mean of each bar's spb steps (padding counts as silence)
    phrase   float32 [B, L//(spb·bpp), D]
    mask     bool    [B, L]          True on real steps (a song shorter than L is padded, never dropped)
    bar_mask, phrase_mask  bool      True where the bar / phrase lies wholly on real steps
    metrics  dict name -> [B, ...]   the stored window metrics of each window (metrics.zarr rows)
    song, start  int64 [B]           store song index and song-relative first step
"""
from __future__ import annotations

import itertools
import json
import logging
import math
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
    pack: bool = False          # answer with a PackedBatch when in a worker (WindowLoader unpacks)


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
    used; checked here). Songs whose steps_per_bar differs from `steps_per_bar` (e.g. 3/4 songs for
    a 16-step-bar model) are left out, with a logged count. Maps open lazily, once per process, so
    the dataset pickles small for DataLoader workers.

    augment: each window is replaced by a stored window of the same song shifted by a whole number
    of bars (at most `max_shift_bars`), so bar phase and stored metrics stay right and nothing wraps;
    `velocity_jitter` > 0 scales each hit's velocity by exp(N(0, jitter)), clipped to 1..127, so
    the hits themselves never change. Randomness comes from the batch's seed (the sampler derives
    it from seed, epoch, rank and batch number), so it does not depend on which worker runs it.
    """

    def __init__(self, store: str | Path, split: str = "train", seq_len: int = 256,
                 stride: int | None = None, steps_per_bar: int = 16, bars_per_phrase: int = 4,
                 augment: bool = False, *, max_shift_bars: int | None = None,
                 velocity_jitter: float = 0.0, seed: int = 0):
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
        self.metric_names = list(manifest["metric_names"])
        self.drum_names = list(manifest["drum_names"])
        self._maps: dict[str, Any] | None = None
        maps = self._open()
        self._len = len(maps["table"])
        if maps["excluded_songs"]:
            log.warning("%s/%s: %d songs (%d windows) left out: steps_per_bar != %d", self.ready, split,
                        maps["excluded_songs"], maps["excluded_windows"], steps_per_bar)
        self.excluded_songs, self.excluded_windows = maps["excluded_songs"], maps["excluded_windows"]

    # -- maps, opened once per process ---------------------------------------------------------
    def _open(self) -> dict[str, Any]:
        if self._maps is None:
            load = lambda name: np.load(self.ready / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
            table = np.load(self.ready / f"windows_{self.split}.npy", allow_pickle=False)
            spb = np.load(self.ready / "song_steps_per_bar.npy", allow_pickle=False)
            keep = spb[table[:, SONG]] == self.steps_per_bar
            excluded = table[~keep]
            table = np.ascontiguousarray(table[keep])
            # Windows of one song are contiguous: [first, last] table position of each window's song.
            new_song = np.r_[True, table[1:, SONG] != table[:-1, SONG]] if len(table) else np.zeros(0, bool)
            first = np.maximum.accumulate(np.where(new_song, np.arange(len(table)), 0))
            end_song = np.r_[table[1:, SONG] != table[:-1, SONG], True] if len(table) else new_song
            last = np.minimum.accumulate(np.where(end_song, np.arange(len(table)), len(table))[::-1])[::-1]
            self._maps = {
                "hits": load("hits.npy"), "velocity": load("velocity.npy"), "table": table,
                "offset": self._load_offset(load),
                "first": first, "last": last,
                "metrics": {n: load(f"metrics/{n}.npy") for n in self.metric_names},
                "excluded_songs": int(len(np.unique(excluded[:, SONG]))),
                "excluded_windows": int(len(excluded)),
            }
        return self._maps

    def _load_offset(self, load):
        if not (self.ready / "offset.npy").exists():
            raise FileNotFoundError(f"{self.ready}: no offset.npy (exported before timing offsets were "
                                    "stored); rebuild: `dvc repro` (or python -m pipeline, then export)")
        return load("offset.npy")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None   # each worker maps the files itself: nothing big crosses the pipe
        return state

    def __len__(self) -> int:
        return self._len

    @property
    def num_drums(self) -> int:
        return len(self.drum_names)

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
            return self.get_batch(np.asarray(key.indices, np.int64), seed=key.seed, pack=key.pack)
        idx = np.asarray(key, np.int64)
        return self.get_batch(idx, seed=(self.seed, *idx.tolist()))

    def __getitems__(self, indices: list[int]):
        """Batch fetch for `DataLoader(batch_sampler=…)`: the whole batch in one gather."""
        return self[list(indices)]

    def get_batch(self, idx: np.ndarray, seed: tuple[int, ...] = (0,), pack: bool = False) -> dict[str, Any]:
        """The batch of windows `idx` as a dict of tensors (see the module docstring).

        One compiled pass copies each window's contiguous rows and fills step, velocity, mask and
        the bar sums at once; metrics are one `np.take` of rows per metric. All outputs are views
        of one buffer; in a DataLoader worker it is one shared-memory segment, so handing the batch
        to the main process copies nothing and passes one file descriptor, not one per tensor
        (`pack`: return it as a PackedBatch, which WindowLoader unpacks).
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
        t = m["table"][idx]
        B, L, D = len(idx), self.seq_len, self.num_drums
        spb, bpp = self.steps_per_bar, self.bars_per_phrase
        nb, nph = L // spb, L // (spb * bpp)
        specs = [("step", (B, L, D), torch.float32), ("velocity", (B, L, D), torch.uint8),
                 ("offset", (B, L, D), torch.int8),
                 ("bar", (B, nb, D), torch.float32), ("phrase", (B, nph, D), torch.float32),
                 ("mask", (B, L), torch.bool), ("bar_mask", (B, nb), torch.bool),
                 ("phrase_mask", (B, nph), torch.bool), ("song", (B,), torch.int64), ("start", (B,), torch.int64)]
        specs += [(f"metrics/{k}", (B, *a.shape[1:]), _TORCH_DTYPES[a.dtype.str]) for k, a in m["metrics"].items()]
        in_worker = torch.utils.data.get_worker_info() is not None
        buffer, layout = _arena(specs, shared=in_worker)
        out = unpack(buffer, layout)
        step, vel = out["step"].numpy(), out["velocity"].numpy()
        _gather_windows(m["hits"], m["velocity"], t[:, OFFSET].copy(), t[:, LENGTH].copy(), spb, bpp,
                        step, vel, out["bar"].numpy(), out["phrase"].numpy(), out["mask"].numpy())
        if rng is not None and self.velocity_jitter > 0:
            vel[:] = _jitter(vel, step, rng, self.velocity_jitter)
        length = t[:, LENGTH, None]
        out["bar_mask"].numpy()[:] = (np.arange(1, nb + 1) * spb)[None, :] <= length
        out["phrase_mask"].numpy()[:] = (np.arange(1, nph + 1) * spb * bpp)[None, :] <= length
        out["song"].numpy()[:], out["start"].numpy()[:] = t[:, SONG], t[:, START]
        rows = t[:, OFFSET, None] + np.arange(L)                     # the window's rows; 0 on padding
        real = out["mask"].numpy()
        out["offset"].numpy()[:] = np.where(real[..., None], m["offset"][np.where(real, rows, 0)], 0)
        for name, arr in m["metrics"].items():
            dst = out["metrics"][name].numpy()
            if dst.dtype == arr.dtype:
                np.take(arr, t[:, ROW], axis=0, out=dst)
            else:
                dst[...] = arr[t[:, ROW]]          # widened (see _TORCH_DTYPES)
        return PackedBatch(buffer, layout) if pack and in_worker else out

    def _shift(self, idx: np.ndarray, rng: np.random.Generator, m: dict) -> np.ndarray:
        """Whole-bar re-windowing: another stored window of the same song, k bar-units away."""
        unit = math.lcm(self.steps_per_bar, self.stride)            # steps: whole bars and whole strides
        max_units = self.max_shift_bars * self.steps_per_bar // unit   # |shift| ≤ max_shift_bars bars
        if max_units == 0:
            return idx
        k = rng.integers(-max_units, max_units + 1, size=len(idx))
        j = idx + k * (unit // self.stride)
        ok = (j >= m["first"][idx]) & (j <= m["last"][idx])
        return np.where(ok, j, idx)


# numpy dtype of a stored metric -> tensor dtype; unsigned wider than 8 bits widens to a signed
# type (torch's uint16/uint32 support few ops), e.g. bar_hits uint16 -> int32.
_TORCH_DTYPES = {np.dtype(d).str: getattr(torch, t) for d, t in [
    ("float32", "float32"), ("float64", "float64"), ("int32", "int32"), ("int64", "int64"),
    ("int16", "int16"), ("uint8", "uint8"), ("int8", "int8"), ("bool", "bool"), ("float16", "float16"),
    ("uint16", "int32"), ("uint32", "int64")]}


class PackedBatch(NamedTuple):
    """A batch as one byte buffer + (key, shape, dtype, offset) of each tensor in it; see `unpack`."""

    buffer: torch.Tensor
    layout: tuple


_NUMPY_DTYPES = {getattr(torch, t): np.dtype(t) for t in (
    "float32", "float64", "int32", "int64", "int16", "uint8", "int8", "bool", "float16")}


def _arena(specs, shared: bool) -> tuple[torch.Tensor, tuple]:
    layout, offset = [], 0
    for key, shape, dtype in specs:
        layout.append((key, tuple(shape), dtype, offset))
        offset += -(-math.prod(shape) * dtype.itemsize // 64) * 64      # 64-byte aligned views
    if shared:      # allocated in shared memory from the start: no copy when it is sent
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(offset, 1)))
    else:
        buffer = torch.empty(max(offset, 1), dtype=torch.uint8)
    return buffer, tuple(layout)


def unpack(buffer: torch.Tensor, layout) -> dict[str, Any]:
    """Views of `buffer`: the batch dict (keys `metrics/<name>` go into the `metrics` dict)."""
    out: dict[str, Any] = {"metrics": {}}
    raw = buffer.numpy()        # numpy views are ~3x cheaper to make than torch views; same memory
    for key, shape, dtype, offset in layout:
        shape = tuple(shape)
        np_dtype = _NUMPY_DTYPES[dtype]
        nbytes = math.prod(shape) * np_dtype.itemsize
        view = torch.from_numpy(raw[offset:offset + nbytes].view(np_dtype).reshape(shape))
        if key.startswith("metrics/"):
            out["metrics"][key[len("metrics/"):]] = view
        else:
            out[key] = view
    return out


@njit(cache=True, nogil=True)
def _gather_windows(hits, velocity, offsets, lengths, spb, bpp, step, vel, bar, phrase, mask):
    """Copy window b = rows offsets[b] : offsets[b] + lengths[b] (zero padding after), and average bars/phrases.

    bar[b, k] = (1/spb) · Σ_{t in bar k} step[b, t];  phrase[b, p] = (1/bpp) · Σ_{k in phrase p} bar[b, k].
    """
    B, L, D = step.shape
    for b in range(B):
        a, n = offsets[b], lengths[b]
        for k in range(bar.shape[1]):
            for d in range(D):
                bar[b, k, d] = 0.0
        for t in range(L):
            real = t < n
            mask[b, t] = real
            k = t // spb
            for d in range(D):
                h = hits[a + t, d] if real else 0
                step[b, t, d] = h
                vel[b, t, d] = velocity[a + t, d] if real else 0
                if k < bar.shape[1]:
                    bar[b, k, d] += h
        for k in range(bar.shape[1]):
            for d in range(D):
                bar[b, k, d] /= spb
        for p in range(phrase.shape[1]):
            for d in range(D):
                acc = 0.0
                for k in range(p * bpp, (p + 1) * bpp):
                    acc += bar[b, k, d]
                phrase[b, p, d] = acc / bpp


def _jitter(vel: np.ndarray, hits: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    scale = np.exp(rng.normal(0.0, sigma, size=vel.shape)).astype(np.float32)
    out = np.clip(np.rint(vel * scale), 1, 127).astype(np.uint8)
    return np.where(hits > 0, out, 0).astype(np.uint8)


def _first(v):
    return {k: x[0] for k, x in v.items()} if isinstance(v, dict) else v[0]


def collate(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch dict -> flat tensors (metrics stay a flat dict name -> tensor); tensors pass as they are."""
    if isinstance(batch, PackedBatch):
        return batch                    # one buffer crossing from a worker; WindowLoader unpacks it
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

    `state_dict()` holds the epoch and `position` (batches of this epoch already delivered);
    `load_state_dict` + iterating again yields exactly the remaining batches of that epoch.
    `set_epoch(e)` for a new epoch starts it at 0; for the current epoch it keeps the position.
    """

    def __init__(self, num_windows: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int | None = None, rank: int | None = None):
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
        self.pack = False       # set by make_loader when workers hand batches over

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's windows for `epoch`, in order."""
        n, world = self.num_windows, self.num_replicas
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n, dtype=np.int64))
        per_rank = n // world if self.drop_last else -(-n // world)
        order = np.resize(order, per_rank * world) if n else order[:0]   # resize repeats the head
        return order[self.rank::world]

    def batches(self, epoch: int) -> list[np.ndarray]:
        mine = self.rank_indices(epoch)
        count = len(mine) // self.batch_size if self.drop_last else -(-len(mine) // self.batch_size)
        return [mine[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count)]

    def __len__(self) -> int:
        per_rank = (self.num_windows // self.num_replicas if self.drop_last
                    else -(-self.num_windows // self.num_replicas))
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def start_position(self) -> int:
        """Where the next iteration begins: the saved position mid-epoch, else 0."""
        return self.position if 0 < self.position < len(self) else 0

    def __iter__(self):
        batches = self.batches(self.epoch)
        for n in range(self.start_position(), len(batches)):
            self.position = n + 1
            yield BatchRequest(batches[n], (self.seed, self.epoch, self.rank, n), self.pack)

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

    worker_type="thread" (default): `workers` threads of this process prefetch the next
    `workers * prefetch_factor` batches into fresh private tensors. The gather is a numba kernel
    compiled `nogil=True`, so threads overlap with the training loop and nothing crosses a process
    boundary (a process worker pays for a fresh shared-memory buffer per batch, as long as the
    gather itself; benchmarks/README.md "Loader"). Threads start with each epoch's iteration and are
    joined when it ends, breaks or raises. worker_type="process": torch's worker processes (for
    per-batch work that holds the GIL); batches cross as one shared buffer (PackedBatch).
    """

    def __init__(self, dataset, *, num_workers: int = 0, worker_type: str = "thread",
                 prefetch_factor: int | None = None, **kwargs):
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.workers, self.worker_type = int(num_workers), worker_type
        self.prefetch_factor_threads = int(prefetch_factor or 2)
        if worker_type == "process" and num_workers > 0:
            kwargs.setdefault("persistent_workers", True)
            super().__init__(dataset, num_workers=num_workers, prefetch_factor=prefetch_factor, **kwargs)
        else:   # torch's loop runs in this process; threads (if any) are ours
            kwargs.pop("persistent_workers", None)
            super().__init__(dataset, num_workers=0, **kwargs)

    @property
    def threaded(self) -> bool:
        return self.worker_type == "thread" and self.workers > 0

    def __iter__(self):
        sampler = self.sampler
        start = sampler.start_position()
        batches = self._thread_batches() if self.threaded else super().__iter__()
        for n, batch in enumerate(batches, start=1):
            sampler.position = start + n
            yield unpack(*batch) if isinstance(batch, PackedBatch) else batch

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


WORKER_TYPES = ("thread", "process")


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: _pin(v) if isinstance(v, dict) else v.pin_memory() for k, v in batch.items()}


def make_loader(dataset: CompleteHierarchicalDrumDataset, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, drop_last: bool = False, num_workers: int = 0, worker_type: str = "thread",
                pin_memory: bool = False, num_replicas: int | None = None, rank: int | None = None,
                **kwargs) -> WindowLoader:
    """The loader the trainer uses: one gather per batch, sharded and resumable (`loader.sampler`).

    num_workers prefetching workers of `worker_type` ("thread", default, or "process"); see WindowLoader.
    """
    sampler = WindowBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                 num_replicas=num_replicas, rank=rank)
    sampler.pack = num_workers > 0 and worker_type == "process"
    return WindowLoader(dataset, batch_size=None, sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, worker_type=worker_type, pin_memory=pin_memory, **kwargs)


def get_complete_rl_dataloader(npz_dir_or_store: str | Path, seq_len: int = 512, steps_per_bar: int = 16,
                               bars_per_phrase: int = 4, batch_size: int = 16, shuffle: bool = True,
                               augment: bool = False, num_workers: int = 0, *, worker_type: str = "thread",
                               split: str = "train",
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
                       num_workers=num_workers, worker_type=worker_type)
