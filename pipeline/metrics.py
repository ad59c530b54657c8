"""The `metrics` stage: data/store.zarr -> data/metrics.zarr, every metric of every window.

    python -m pipeline.metrics [metrics.stride=1 metrics.scheduler=tcp://host:8786 ...]

Layout (docs/architecture.md, "Metrics"): window/{song,start,length,<metric>}, song/<metric>,
section/{song,start,end,<metric>}, bar/{offsets,mean}, phrase/{offsets,mean}, attrs.
Songs are processed in blocks of consecutive songs: one contiguous read from the store, the
songs of a block as parallel dask tasks (threads; numba kernels release the GIL, or a
dask.distributed cluster), then the block's rows are appended in order. The whole output is
written to a temporary sibling and renamed into place (pipeline.atomic.atomic_path).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import dask
import hydra
import numpy as np
import zarr
from omegaconf import DictConfig
from tqdm import tqdm

import kernels
from kernels.spec import (SECTION_SCHEMA, SONG_SCHEMA, WINDOW_SCHEMA, check_sections,
                          empty_window_outputs, window_grid)
from pipeline.atomic import atomic_path
from pipeline.config import CONF_DIR, exit_on
from pipeline.store import Store

log = logging.getLogger(__name__)


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
    def from_config(cls, m: DictConfig) -> Params:
        return cls(int(m.seq_len), int(m.stride), int(m.steps_per_bar), int(m.bars_per_phrase),
                   int(m.ngram_n), int(m.fast_threshold),
                   None if m.dense_threshold is None else float(m.dense_threshold))

    @property
    def num_bars(self) -> int:
        return self.seq_len // self.steps_per_bar


def song_result(roll: np.ndarray, sections: np.ndarray, spb: int, bpb: int, p: Params) -> SongResult:
    """All metrics of one song; the song's own bar length, the configured table widths."""
    windows = kernels.window_metrics(roll, seq_len=p.seq_len, stride=p.stride, steps_per_bar=spb,
                                     beats_per_bar=bpb, ngram_n=p.ngram_n,
                                     fast_threshold=p.fast_threshold,
                                     dense_threshold=p.dense_threshold, num_bars=p.num_bars,
                                     ioi_bins=p.steps_per_bar, bars_per_phrase=p.bars_per_phrase)
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
    windows = empty_window_outputs(0, D, p.num_bars, p.steps_per_bar)
    song = {k: np.zeros(shape(D), dt) for k, (dt, shape) in SONG_SCHEMA.items()}
    section = {k: np.zeros((0, *shape(D)), dt) for k, (dt, shape) in SECTION_SCHEMA.items()}
    return SongResult(np.zeros(0, np.int64), 0, windows, song, np.zeros((0, 2), np.int64), section,
                      np.zeros((0, D), np.float32), np.zeros((0, D), np.float32), error)


def _safe_song(roll, sections, spb, bpb, p: Params) -> SongResult:
    # A bad song (e.g. a bar that is not whole beats) is reported and skipped; the rest go on.
    try:
        return song_result(roll, sections, spb, bpb, p)
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


class _Writer:
    """Appends rows to the window/* arrays of the output group, block after block."""

    def __init__(self, root: zarr.Group, W: int, D: int, p: Params, chunk: int):
        grp = root.create_group("window")
        rows = max(1, min(chunk, max(W, 1)))
        self.arrays = {name: grp.create_array(name, shape=(W,), dtype="int64", chunks=(rows,))
                       for name in ("song", "start", "length")}
        for name, (dtype, shape) in WINDOW_SCHEMA.items():
            tail = shape(D, p.num_bars, p.steps_per_bar)
            self.arrays[name] = grp.create_array(name, shape=(W, *tail), dtype=dtype,
                                                 chunks=(rows, *tail), fill_value=0)
        self.pos = 0

    def append(self, block: dict[str, np.ndarray]) -> None:
        n = len(block["song"])
        if n:
            for name, arr in self.arrays.items():
                arr[self.pos:self.pos + n] = block[name]
            self.pos += n

    def finish(self) -> None:
        # Skipped songs have no windows: shrink the preallocated tables to the rows written.
        for arr in self.arrays.values():
            if arr.shape[0] != self.pos:
                arr.resize((self.pos, *arr.shape[1:]))


@contextlib.contextmanager
def _scheduler(m: DictConfig):
    """Yields compute(tasks) -> results: on a dask.distributed cluster if metrics.scheduler is
    an address (one connection for the whole run), else on local threads."""
    if m.scheduler:
        from dask.distributed import Client
        with Client(str(m.scheduler)) as client:
            yield lambda tasks: client.gather(client.compute(tasks))
    else:
        yield lambda tasks: list(dask.compute(*tasks, scheduler="threads", num_workers=m.num_workers))


def run(cfg: DictConfig) -> dict:
    """Compute and write data/metrics.zarr; returns a summary (songs, windows, errors, path)."""
    p = Params.from_config(cfg.metrics)
    store = Store(cfg.paths.store)
    S, D = store.num_songs, store.num_drums
    offsets = store.song_offsets
    windows = np.array([len(window_grid(int(T), p.seq_len, p.stride)[0]) for T in np.diff(offsets)],
                       np.int64)
    per_song, errors = [], []
    out_path = Path(cfg.paths.metrics)
    with atomic_path(out_path) as tmp, _scheduler(cfg.metrics) as compute:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        writer = _Writer(root, int(windows.sum()), D, p, int(cfg.metrics.chunk_windows))
        blocks = list(_blocks(offsets, windows, int(cfg.metrics.block_steps),
                                  int(cfg.metrics.block_windows)))
        for b0, b1 in tqdm(blocks, desc="metrics", unit="block", disable=len(blocks) < 2):
            block = compute(_block_tasks(store, b0, b1, p))
            for i, r in zip(range(b0, b1), block):
                if r.error:
                    msg = f"song {i} ({store.meta['name'][i]}, {store.meta['source'][i]}): {r.error}"
                    log.error("metrics: skipped %s", msg)
                    errors.append(msg)
            writer.append(_window_rows(range(b0, b1), block))
            per_song.extend(block)
            for r in block:
                r.windows = None          # rows are on disk; keep only the small per-song parts
        writer.finish()
        _write_songs(root, per_song, D)
        root.attrs.update({
            "seq_len": p.seq_len, "stride": p.stride, "steps_per_bar": p.steps_per_bar,
            "bars_per_phrase": p.bars_per_phrase, "ngram_n": p.ngram_n,
            "fast_threshold": p.fast_threshold, "dense_threshold": p.dense_threshold,
            "store_hash": store_hash(store), "num_windows": writer.pos, "errors": errors,
            "metric_names": {"window": list(WINDOW_SCHEMA), "song": list(SONG_SCHEMA),
                             "section": list(SECTION_SCHEMA)}})
    log.info("metrics: %d windows of %d songs -> %s (%d skipped)", writer.pos, S, out_path, len(errors))
    return {"songs": S, "windows": writer.pos, "errors": errors, "path": str(out_path)}


def _block_tasks(store: Store, b0: int, b1: int, p: Params) -> list:
    """One dask task per song of songs b0..b1-1, after one contiguous read of their rows."""
    off = store.song_offsets
    rows = store.hits[int(off[b0]):int(off[b1])]
    spb, bpb = store.meta["steps_per_bar"], store.meta["beats_per_bar"]
    tasks = []
    for i in range(b0, b1):
        roll = rows[off[i] - off[b0]:off[i + 1] - off[b0]]
        sec = store.sections[store.section_offsets[i]:store.section_offsets[i + 1]]
        tasks.append(dask.delayed(_safe_song)(roll, sec, int(spb[i]), int(bpb[i]), p))
    return tasks


def _window_rows(songs: range, block: list[SongResult]) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {name: [] for name in ("song", "start", "length", *WINDOW_SCHEMA)}
    for i, r in zip(songs, block):
        parts["song"].append(np.full(len(r.starts), i, np.int64))
        parts["start"].append(r.starts)
        parts["length"].append(np.full(len(r.starts), r.length, np.int64))
        for name in WINDOW_SCHEMA:
            parts[name].append(r.windows[name])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _offsets(sizes) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(list(sizes), dtype=np.int64)]).astype(np.int64)


def _write_songs(root: zarr.Group, results: list[SongResult], D: int) -> None:
    """song/*, section/*, bar/*, phrase/*: small per-song arrays, written once at the end."""
    song = root.create_group("song")
    for name, (dtype, shape) in SONG_SCHEMA.items():
        data = np.stack([r.song[name] for r in results]) if results else np.zeros((0, *shape(D)), dtype)
        song.create_array(name, data=data.astype(dtype))
    section = root.create_group("section")
    sec = np.concatenate([r.sections for r in results]) if results else np.zeros((0, 2), np.int64)
    section.create_array("song", data=np.repeat(np.arange(len(results), dtype=np.int64),
                                                [len(r.sections) for r in results]))
    section.create_array("start", data=sec[:, 0].astype(np.int64))
    section.create_array("end", data=sec[:, 1].astype(np.int64))
    for name, (dtype, shape) in SECTION_SCHEMA.items():
        parts = [r.section[name] for r in results]
        section.create_array(name, data=np.concatenate(parts).astype(dtype) if parts
                             else np.zeros((0, *shape(D)), dtype))
    for level, attr in (("bar", "bars"), ("phrase", "phrases")):
        grp = root.create_group(level)
        means = [getattr(r, attr) for r in results]
        grp.create_array("offsets", data=_offsets(len(m) for m in means))
        grp.create_array("mean", data=np.concatenate(means).astype(np.float32) if means
                         else np.zeros((0, D), np.float32))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on("metrics", FileNotFoundError, ValueError):
        summary = run(cfg)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
