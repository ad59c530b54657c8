"""Training windows read straight from memory-mapped arrays: the dataset (the batch sampler is
train/training/sampler.py, collate and the loader train/training/loader.py; their names are
importable from here too).

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
and with `fields=("velocity", "offset")` / `levels=("bar", "phrase", "section", "song")`:
    velocity uint8   [B, L, D]       MIDI velocity 1..127 of each hit, 0 elsewhere
    offset   int8    [B, L, D]       timing of each hit in 1/128 step (ready/offset.npy), 0 elsewhere
    bar      float32 [B, L//spb, D]  mean of each spb steps from the window's first (padding counts as silence), + bar_mask
    phrase   float32 [B, L//(spb·bpp), D]                                                   + phrase_mask
    section  int64   [B, L]          each step's section: its row in metrics.zarr section/ (-1 on padding
                                     and on a step in no section), + section_metrics dict name -> [B, L, ...]
                                     that section's row of section/<name> (0 where section is -1)
    song_metrics  dict name -> [B, ...]  the window's song's row of metrics.zarr song/<name>
and with `conditions={name: labels}` (a conditioned model's vocabulary, train/model/conditioning.py):
    cond     int64   [B, C]          the window's song's condition ids (0 = none / unseen label)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numba import njit
from torch.utils.data import Dataset

from train.training.sampler import BatchRequest, WindowBatchSampler

log = logging.getLogger(__name__)

ROW, SONG, START, LENGTH, OFFSET = range(5)   # columns of windows_<split>.npy (pipeline.export)


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
            if "section" in self.levels:
                self._maps["section"] = self._section_table()
            if self.conditions:
                from train.model.conditioning import read_song_labels, song_ids
                self._maps["cond"] = song_ids(self.conditions, read_song_labels(self.ready), self.bpm_buckets)
        return self._maps

    def _load_offset(self, load):
        if not (self.ready / "offset.npy").exists():
            raise FileNotFoundError(f"{self.ready}: no offset.npy (exported before timing offsets were "
                                    "stored); rebuild: `dvc repro` (or python -m pipeline, then export)")
        return load("offset.npy")

    def _metrics_group(self, level: str):
        """metrics.zarr <level>/ (song: one row per song, section: one per section), for levels=(level,)."""
        import zarr

        from pipeline.ready_paths import recorded

        path = recorded(self.ready, self.manifest, "metrics_store")
        if not (path / "zarr.json").exists():
            path = self.ready.parent / path.name         # the export moved with its data folder
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.ready}: levels=('{level}',) reads {level} metrics from "
                                    f"{self.manifest.get('metrics_store')!r}, which is not there")
        return zarr.open_group(str(path), mode="r")[level]

    def _song_table(self) -> dict[str, np.ndarray]:
        """metrics.zarr song/<name>, [S, ...] each: small (one row per song), read into memory."""
        grp = self._metrics_group("song")
        return {name: grp[name][:] for name in sorted(grp.array_keys())}

    def _section_table(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(owner, metrics): owner [N] int32 is, for every row of the export, its section's row in
        metrics.zarr section/ (-1 on a step in no section; where a song's sections overlap, the later
        one in its list); metrics are section/<name> [K, ...], one row per section, read whole."""
        grp = self._metrics_group("section")
        song, start, end = (grp[k][:] for k in ("song", "start", "end"))
        offsets = np.load(self.ready / "song_offsets.npy", allow_pickle=False)
        lengths = end - start
        rows = np.repeat(np.arange(len(song), dtype=np.int32), lengths)
        # the export rows of each section in turn: its first row, then +1 per step
        pos = np.repeat(offsets[song] + start - (np.cumsum(lengths) - lengths), lengths) + np.arange(len(rows))
        owner = np.full(int(offsets[-1]), -1, np.int32)
        np.maximum.at(owner, pos, rows)            # overlaps: the highest row (the later section) wins
        return owner, {n: grp[n][:] for n in sorted(grp.array_keys()) if n not in ("song", "start", "end")}

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
        """The levels asked for: bar/phrase means of the gathered steps (+ masks), section and song metrics."""
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
        if "section" in self.levels:
            self._sections(out, t, L)

    def _sections(self, out: dict, t: np.ndarray, L: int) -> None:
        """Each step's section row (-1 on padding and outside every section) and that section's
        metrics, one gather each (the offset field's row arithmetic)."""
        owner, metrics = self._open()["section"]
        mask = out["mask"].numpy()
        rows = np.where(mask, t[:, OFFSET, None] + np.arange(L), 0)
        sec = np.where(mask, owner[rows], -1).astype(np.int64)
        out["section"] = torch.from_numpy(sec)
        outside, take = sec < 0, np.maximum(sec, 0)
        out["section_metrics"] = {}
        for name, arr in metrics.items():
            values = _take(arr, take)
            values[outside] = 0
            out["section_metrics"][name] = torch.from_numpy(values)

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
LEVELS = ("bar", "phrase", "section", "song")   # coarser levels a batch may carry (metrics: window level)

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


# The loader has a module of its own (it imports this one lazily); its names stay importable here.
from train.training.loader import (WindowLoader, collate, get_complete_rl_dataloader,  # noqa: E402
                                   make_loader, window_loader)

__all__ = ["BatchRequest", "CompleteHierarchicalDrumDataset", "FIELDS", "LEVELS", "WindowBatchSampler",
           "WindowLoader", "collate", "get_complete_rl_dataloader", "make_loader", "resolve_ready_dir",
           "window_loader"]
