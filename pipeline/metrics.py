"""The `metrics` stage: data/store.zarr -> data/metrics.zarr, every metric of every window.

    python -m pipeline.metrics [window.stride=1 metrics.scheduler=tcp://host:8786 ...]

Layout (docs/architecture.md, "Metrics"): window/{song,start,length,<metric>}, song/<metric>,
section/{song,start,end,<metric>}, bar/{offsets,mean}, phrase/{offsets,mean}, attrs.
Songs are processed in partitions of consecutive songs (`metrics.block_steps`/`block_windows`):
one task per partition (one contiguous read from the store, then its songs one after the other),
on local threads (numba kernels release the GIL) or a dask.distributed cluster
(`metrics.scheduler=<address>`). Each partition's rows are appended in song order as soon as it
and the ones before it are done, whole Zarr chunks at a time (common.parallel.ordered_map), so
memory does not grow with the corpus. The whole output is written to a temporary sibling and
renamed into place (common.atomic.atomic_path).
"""
from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import zarr
from omegaconf import DictConfig
from tqdm import tqdm

import kernels
from kernels.spec import SECTION_SCHEMA, SONG_SCHEMA, check_sections, window_grid
from common.atomic import atomic_path, is_url, join
from common.config import CONF_DIR, exit_on
from common.progress import heartbeat
from common.lock import LockHeld, data_dir_lock
from common.parallel import executor, ordered_map
from pipeline.store import Store
from pipeline.store import read_songs

log = logging.getLogger(__name__)
# window/<name> tables: every metric of every registered family (kernels/families.py), in order
TABLES = kernels.METRICS


@dataclass
class SongResult:
    """Everything the stage stores for one song."""

    starts: np.ndarray            # [W] song-relative window starts
    length: int                   # L of every window of the song
    windows: dict
    song: dict
    sections: np.ndarray          # [K, 2]
    section: dict
    bars: np.ndarray              # [bars, D]
    phrases: np.ndarray           # [phrases, D]
    error: str = ""


@dataclass
class Params:
    seq_len: int
    stride: int
    steps_per_bar: int
    bars_per_phrase: int
    ngram_n: int
    fast_threshold: int
    dense_threshold: float | None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Params:
        """The training window (`window.seq_len`, `window.stride`) and the metric options (`metrics.*`)."""
        m = cfg.metrics
        return cls(int(cfg.window.seq_len), int(cfg.window.stride), int(m.steps_per_bar), int(m.bars_per_phrase),
                   int(m.ngram_n), int(m.fast_threshold),
                   None if m.dense_threshold is None else float(m.dense_threshold))

    @property
    def num_bars(self) -> int:
        return self.seq_len // self.steps_per_bar

    def dims(self, D: int) -> dict:
        """The tables' widths (kernels.schema.DIMS): the configured bar, not each song's."""
        return {"drums": D, "bars": self.num_bars, "ioi_bins": self.steps_per_bar, "positions": self.steps_per_bar}


def song_result(roll: np.ndarray, sections: np.ndarray, spb: int, bpb: int, p: Params,
                velocity: np.ndarray | None = None, offset: np.ndarray | None = None) -> SongResult:
    """All metrics of one song; the song's own bar length, the configured table widths.
    Without velocity / offset: velocity = the roll's values, every hit on the grid."""
    velocity = np.asarray(roll) if velocity is None else velocity
    offset = np.zeros(np.shape(roll), np.int8) if offset is None else offset
    windows = kernels.all_window_metrics(roll, velocity, offset, seq_len=p.seq_len, stride=p.stride,
                                         steps_per_bar=spb, beats_per_bar=bpb, ngram_n=p.ngram_n,
                                         fast_threshold=p.fast_threshold, dense_threshold=p.dense_threshold,
                                         num_bars=p.num_bars, ioi_bins=p.steps_per_bar, positions=p.steps_per_bar,
                                         bars_per_phrase=p.bars_per_phrase)
    song = kernels.song_metrics(roll, steps_per_bar=spb, bars_per_phrase=p.bars_per_phrase,
                                ngram_n=p.ngram_n)
    phrase_len = spb * p.bars_per_phrase
    sec = check_sections(sections, len(roll), phrase_len)
    section = kernels.section_metrics(roll, sec, steps_per_bar=spb, bars_per_phrase=p.bars_per_phrase,
                                      dense_threshold=p.dense_threshold)
    starts, length = window_grid(len(roll), p.seq_len, p.stride)
    return SongResult(starts, length, windows, song, sec, section,
                      kernels.bar_means(roll, steps_per_bar=spb),
                      kernels.phrase_means(roll, steps_per_bar=spb, bars_per_phrase=p.bars_per_phrase))


def _empty_result(D: int, p: Params, error: str) -> SongResult:
    windows = {k: np.zeros((0, *m.trailing(p.dims(D))), m.dtype) for k, m in TABLES.items()}
    song = {k: np.zeros(shape(D), dt) for k, (dt, shape) in SONG_SCHEMA.items()}
    section = {k: np.zeros((0, *shape(D)), dt) for k, (dt, shape) in SECTION_SCHEMA.items()}
    return SongResult(np.zeros(0, np.int64), 0, windows, song, np.zeros((0, 2), np.int64), section,
                      np.zeros((0, D), np.float32), np.zeros((0, D), np.float32), error)


def _safe_song(roll, sections, spb, bpb, p: Params, velocity=None, offset=None) -> SongResult:
    # A bad song (e.g. a bar that is not whole beats) is reported and skipped; the rest go on.
    try:
        return song_result(roll, sections, spb, bpb, p, velocity, offset)
    except ValueError as exc:
        return _empty_result(roll.shape[1], p, str(exc))


def _blocks(offsets: np.ndarray, windows: np.ndarray, block_steps: int, block_windows: int):
    """Runs of consecutive songs of at most block_steps steps and block_windows windows
    (at least one song each): bounds the memory held between compute and write."""
    start, S = 0, len(offsets) - 1
    while start < S:
        end = start + 1
        while (end < S and offsets[end + 1] - offsets[start] <= block_steps
               and windows[start:end + 1].sum() <= block_windows):
            end += 1
        yield start, end
        start = end


def store_hash(store: Store) -> str:
    """Which store (inputs + build settings) the metrics came from (`Store.hash`)."""
    return store.hash


class _Table:
    """One output array written in row order, whole chunks at a time: it holds less than one
    chunk of rows between writes, and no chunk is ever read back and rewritten."""

    def __init__(self, grp: zarr.Group, name: str, dtype, tail: tuple, rows: int):
        self.arr = grp.create_array(name, shape=(0, *tail), dtype=dtype, chunks=(rows, *tail),
                                    fill_value=0)
        self.rows, self.pending = rows, []

    def append(self, data: np.ndarray) -> None:
        if len(data):
            self.pending.append(np.asarray(data, self.arr.dtype))
        if sum(len(d) for d in self.pending) >= self.rows:
            self._flush(whole_chunks=True)

    def close(self) -> None:
        self._flush(whole_chunks=False)

    def _flush(self, whole_chunks: bool) -> None:
        if not self.pending:
            return
        data = np.concatenate(self.pending)
        n = len(data) // self.rows * self.rows if whole_chunks else len(data)
        a = self.arr.shape[0]
        self.arr.resize((a + n, *self.arr.shape[1:]))
        self.arr[a:a + n] = data[:n]
        self.pending = [data[n:]] if n < len(data) else []


def _tables(root: zarr.Group, D: int, p: Params, rows: int) -> dict[str, _Table]:
    """Every output array ("group/name" -> _Table), in the layout of the module docstring."""
    spec = {f"window/{k}": ("int64", ()) for k in ("song", "start", "length")}
    spec.update({f"window/{k}": (m.dtype, m.trailing(p.dims(D))) for k, m in TABLES.items()})
    spec.update({f"song/{k}": (dt, sh(D)) for k, (dt, sh) in SONG_SCHEMA.items()})
    spec.update({f"section/{k}": ("int64", ()) for k in ("song", "start", "end")})
    spec.update({f"section/{k}": (dt, sh(D)) for k, (dt, sh) in SECTION_SCHEMA.items()})
    for level in ("bar", "phrase"):
        spec.update({f"{level}/offsets": ("int64", ()), f"{level}/mean": ("float32", (D,))})
    groups = {g: root.create_group(g) for g in ("window", "song", "section", "bar", "phrase")}
    return {key: _Table(groups[key.split("/")[0]], key.split("/")[1], dt, tail, rows)
            for key, (dt, tail) in spec.items()}


def _partition_args(store: Store, b0: int, b1: int, p: Params) -> tuple:
    """What the task for songs b0..b1-1 needs, as plain values: where their rows are, their meters
    and sections (small), so a worker opens just the per-step arrays."""
    off, so = store.song_offsets, store.section_offsets
    return ([str(join(store.path, a)) for a in ("hits", "velocity", "offset")], off[b0:b1 + 1].copy(), b0,
            store.meta["steps_per_bar"][b0:b1].copy(), store.meta["beats_per_bar"][b0:b1].copy(),
            [store.sections[so[i]:so[i + 1]] for i in range(b0, b1)], p)


def _partition(args: tuple) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """All output rows of one partition of consecutive songs (one contiguous read), and their errors.

    A module-level function of plain arguments, so that it runs the same on local threads,
    processes or a dask.distributed worker (which reads the store itself)."""
    paths, off, b0, spb, bpb, sections, p = args
    rows, vel, tim = read_songs(paths, off, b0)   # checked against the build's per-song sums
    parts: dict[str, list] = collections.defaultdict(list)
    errors = []
    for j, sec in enumerate(sections):
        song = slice(off[j] - off[0], off[j + 1] - off[0])
        r = _safe_song(rows[song], sec, int(spb[j]), int(bpb[j]), p, vel[song], tim[song])
        if r.error:
            errors.append((b0 + j, r.error))
        _add_song(parts, b0 + j, r)
    return {k: np.concatenate(v) for k, v in parts.items()}, errors


def _add_song(parts: dict, i: int, r: SongResult) -> None:
    """One song's rows of every table (bar/phrase offsets: row counts, summed by the driver)."""
    parts["window/song"].append(np.full(len(r.starts), i, np.int64))
    parts["window/start"].append(r.starts)
    parts["window/length"].append(np.full(len(r.starts), r.length, np.int64))
    for name in TABLES:
        parts[f"window/{name}"].append(r.windows[name])
    for name in SONG_SCHEMA:
        parts[f"song/{name}"].append(np.asarray(r.song[name])[None])
    parts["section/song"].append(np.full(len(r.sections), i, np.int64))
    parts["section/start"].append(r.sections[:, 0])
    parts["section/end"].append(r.sections[:, 1])
    for name in SECTION_SCHEMA:
        parts[f"section/{name}"].append(r.section[name])
    for level, means in (("bar", r.bars), ("phrase", r.phrases)):
        parts[f"{level}/mean"].append(means)
        parts[f"{level}/offsets"].append(np.array([len(means)], np.int64))


def run(cfg: DictConfig) -> dict:
    """Compute and write data/metrics.zarr; returns a summary (songs, windows, errors, path).

    Partitions of consecutive songs (metrics.block_steps / block_windows) run as tasks on the
    scheduler; their rows are appended in song order as they come back, whole chunks at a time,
    so memory is a few partitions and one chunk per table, whatever the corpus size."""
    m = cfg.metrics
    p = Params.from_config(cfg)
    store = Store(cfg.paths.store)
    S, D = store.num_songs, store.num_drums
    offsets = store.song_offsets
    windows = np.array([len(window_grid(int(T), p.seq_len, p.stride)[0]) for T in np.diff(offsets)],
                       np.int64)
    errors = []
    out_path = cfg.paths.metrics if is_url(cfg.paths.metrics) else Path(cfg.paths.metrics)
    blocks = list(_blocks(offsets, windows, int(m.block_steps), int(m.block_windows)))
    workers = m.num_workers or os.cpu_count() or 1
    with atomic_path(out_path, marker="metrics") as tmp, executor(m.scheduler or "threads", workers) as pool:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        tables = _tables(root, D, p, max(1, min(int(m.chunk_windows), max(int(windows.sum()), 1))))
        tables["bar/offsets"].append(np.zeros(1, np.int64))
        tables["phrase/offsets"].append(np.zeros(1, np.int64))
        ends = {"bar": 0, "phrase": 0}
        tasks = (_partition_args(store, b0, b1, p) for b0, b1 in blocks)
        for rows, errs in tqdm(ordered_map(pool, _partition, tasks, 2 * int(workers)), total=len(blocks),
                               desc="metrics", unit="block", disable=len(blocks) < 2):
            for level in ends:   # per-song row counts -> running offsets
                counts = rows[f"{level}/offsets"]
                rows[f"{level}/offsets"] = ends[level] + np.cumsum(counts)
                ends[level] += int(counts.sum())
            for key, table in tables.items():
                table.append(rows[key])
            errors += [f"song {i} ({store.meta['name'][i]}, {store.meta['source'][i]}): {e}" for i, e in errs]
        for table in tables.values():
            table.close()
        num_windows = int(tables["window/song"].arr.shape[0])
        _finish(root, p, store, num_windows, errors)
    for msg in errors:
        log.error("metrics: skipped %s", msg)
    log.info("metrics: %d windows of %d songs -> %s (%d skipped)", num_windows, S, out_path, len(errors))
    return {"songs": S, "windows": num_windows, "errors": errors, "path": str(out_path)}


def _finish(root: zarr.Group, p: Params, store: Store, num_windows: int, errors: list[str]) -> None:
    root.attrs.update({
        "seq_len": p.seq_len, "stride": p.stride, "steps_per_bar": p.steps_per_bar,
        "bars_per_phrase": p.bars_per_phrase, "ngram_n": p.ngram_n,
        "fast_threshold": p.fast_threshold, "dense_threshold": p.dense_threshold,
        "store_hash": store_hash(store), "num_windows": num_windows, "errors": errors,
        "metric_names": {"window": list(TABLES), "song": list(SONG_SCHEMA),
                         "section": list(SECTION_SCHEMA)}})


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on("metrics", FileNotFoundError, ValueError, LockHeld, OSError), data_dir_lock(cfg, "metrics"), heartbeat("metrics"):
        summary = run(cfg)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
