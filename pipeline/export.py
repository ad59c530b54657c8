"""The `export` stage: store.zarr + metrics.zarr -> data/ready/, flat arrays the trainer memory-maps.

Layout of `data/ready/` (every file a plain `.npy`, loadable with `np.load(mmap_mode="r")`):

    hits.npy, velocity.npy   uint8 [N, D]   the store's rows (STEP_ARRAYS), uncompressed, C order
    offset.npy               int8 [N, D]    each hit's timing in 1/128 step
    song_offsets.npy         int64 [S + 1]
    song_steps_per_bar.npy   int32 [S]
    song_<field>.npy         [S]            the song table conditioning reads (SONG_LABELS): style,
                                            beat_type (unicode str), bpm (float32)
    windows_<split>.npy      [W_split, 5]   columns WINDOW_COLUMNS: metrics row, song, start,
                                            length, global row offset (= song_offsets[song] + start);
                                            int32 when every value fits, else int64
    metrics/<name>.npy       [W, ...]       row w = window/<name> of metrics.zarr (all splits), only
                                            the metrics named by `export.metrics` (what training
                                            reads: the rl terms' window targets), each in the
                                            narrowest dtype that holds its values exactly
    manifest.json            seq_len, stride, bars_per_phrase, drum names, metric names/shapes/dtypes,
                             store and metrics hashes and paths (relative to the folder holding
                             ready/: pipeline/ready_paths.py), window counts per split

Everything else (the other window metrics, song/section/bar/phrase tables) stays in the compressed
metrics store, for analysis and for the dataset's optional levels (train.training.data).

Why a copy and not the Zarr chunks themselves: the store is zstd-compressed (small on disk, fast to
build), and a compressed chunk cannot be memory-mapped. One sequential pass here turns it into
arrays any worker can map and fancy-index with no decompression and no per-item Python work.
See docs/data-path.md for the measured cost.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import numpy as np
import zarr
from omegaconf import DictConfig

import common.config
from kernels.spec import window_counts
from common.atomic import atomic_path
from common.lock import LockHeld, data_dir_lock
from common.progress import heartbeat
from common.parallel import executor, ordered_map
from pipeline.ready_paths import to_record
from pipeline.store import ALL_SPLITS as SPLITS  # every split gets its windows
from pipeline.store import FIX, STEP_ARRAYS, DamagedStore, Store, attrs_hash, song_at, verify_copy

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
WINDOW_COLUMNS = ("row", "song", "start", "length", "offset")
_WINDOW_KEYS = ("song", "start", "length")   # window/<key> arrays that index, not metrics
# per-song labels the trainer may condition on (train/model/conditioning.py); plain unicode
# arrays, so they load with allow_pickle=False
SONG_LABELS = ("style", "beat_type", "bpm")


def _window_blocks(win: zarr.Group):
    """(first row, song, start, length) of the window tables, one chunk of rows at a time."""
    W, block = win["song"].shape[0], max(1, int(win["song"].chunks[0]))
    for a in range(0, W, block):
        yield (a, *(np.asarray(win[k][a:a + block], np.int64) for k in _WINDOW_KEYS))


def _check_windows(metrics_path: Path, store: Store, win: zarr.Group, seq_len: int, stride: int) -> np.ndarray:
    """Every song with windows has exactly its expected windows (docs/architecture.md), checked one
    chunk of window rows at a time; returns the number of windows of each song (0 for a song the
    metrics stage skipped, which it reports)."""
    lengths = np.diff(store.song_offsets)
    expected = window_counts(lengths, seq_len, stride)
    counts = np.zeros(len(lengths), np.int64)
    prev_song, first_row = -1, 0          # the song the previous chunk ended in, and its first row
    for a, song, start, length in _window_blocks(win):
        rows = a + np.arange(len(song))
        ordered = np.all(np.diff(np.r_[prev_song, song]) >= 0) and (len(song) == 0 or song.max() < len(lengths))
        if not ordered:
            raise ValueError(_stale(metrics_path, store, seq_len, stride, "windows out of song order"))
        new = np.r_[song[0] != prev_song, song[1:] != song[:-1]] if len(song) else np.zeros(0, bool)
        firsts = np.maximum.accumulate(np.where(new, rows, first_row if len(song) and not new[0] else 0))
        if (not np.array_equal(start, (rows - firsts) * stride)
                or not np.array_equal(length, np.minimum(lengths[song], seq_len))):
            raise ValueError(_stale(metrics_path, store, seq_len, stride, "window starts or lengths off the grid"))
        counts += np.bincount(song, minlength=len(lengths))
        if len(song):
            prev_song, first_row = int(song[-1]), int(firsts[-1])
    if np.any((counts != expected) & (counts != 0)):
        raise ValueError(_stale(metrics_path, store, seq_len, stride, "a song's window count differs"))
    return counts


def _stale(metrics_path: Path, store: Store, seq_len: int, stride: int, why: str) -> str:
    return (f"{metrics_path}: its windows are not the windows of {store.path} at seq_len={seq_len}, "
            f"stride={stride} ({why}); the metrics are stale: rerun the metrics stage (`dvc repro metrics`)")


def _write_tables(tmp: Path, store: Store, win: zarr.Group, counts: np.ndarray) -> dict[str, int]:
    """windows_<split>.npy, filled one chunk of window rows at a time; returns the rows per split."""
    split_of_song = _split_codes(store)
    sizes = {s: int(counts[split_of_song == i].sum()) for i, s in enumerate(SPLITS)}
    W, N = int(counts.sum()), int(store.song_offsets[-1])
    dtype = np.int32 if max(W, N) <= np.iinfo(np.int32).max else np.int64
    out = {}
    for s, n in sizes.items():
        # the .npy header now; rows are then appended through a file handle, not a long-lived map,
        # whose written pages would stay resident until the end (memory growing with the corpus)
        header = np.lib.format.open_memmap(tmp / f"windows_{s}.npy", mode="w+", dtype=dtype, shape=(n, 5))
        out[s] = (open(tmp / f"windows_{s}.npy", "r+b"), header.offset)
        del header
    try:
        pos = dict.fromkeys(SPLITS, 0)
        for a, song, start, length in _window_blocks(win):
            table = np.stack([a + np.arange(len(song)), song, start, length, store.song_offsets[song] + start], axis=1)
            for i, (s, (fh, offset)) in enumerate(out.items()):
                rows = np.ascontiguousarray(table[split_of_song[song] == i], dtype)
                fh.seek(offset + pos[s] * 5 * rows.itemsize)
                fh.write(rows.tobytes())
                pos[s] += len(rows)
    finally:
        for fh, _ in out.values():
            fh.close()
    return sizes


def _split_codes(store: Store) -> np.ndarray:
    """Each song's split as its index in SPLITS (int8; -1 for none), read a chunk of songs at a time:
    the names as Python strings would cost ~60 bytes per song."""
    names = store.root["songs"]["split"]
    codes = np.full(names.shape[0], -1, np.int8)
    step = max(1, int(names.chunks[0]))
    for a in range(0, names.shape[0], step):
        block = names[a:a + step]
        for i, s in enumerate(SPLITS):
            codes[a:a + len(block)][block == s] = i
    return codes


def _new_npy(src: zarr.Array, dst_path: Path, dtype=None) -> None:
    """An .npy of src's shape and `dtype` (default src's), its rows still to be filled by `_fill`."""
    out = np.lib.format.open_memmap(dst_path, mode="w+", dtype=dtype or src.dtype, shape=src.shape)
    del out


def _fill(job: tuple) -> None:
    """Copy rows [a, b) of a Zarr array (by path) into an existing .npy: one task of the copy, run
    on local threads or a dask.distributed worker (which opens both files itself)."""
    src, dst, a, b = job
    out = np.load(dst, mmap_mode="r+")
    try:
        out[a:b] = zarr.open_array(src, mode="r")[a:b]
    except Exception as exc:   # a codec error of a damaged chunk: the driver names the song
        raise UnreadableRows(src, a, b, exc) from None
    out.flush()
    del out


class UnreadableRows(Exception):
    def __init__(self, src: str, a: int, b: int, exc: Exception):
        super().__init__(src, a, b, exc)
        self.src, self.a, self.b, self.exc = src, a, b, exc


def _copy_all(pool, jobs: list, workers, store: Store, tmp: Path) -> None:
    """Run the row copies, then check the copied rows against the store's per-song sums: a
    missing chunk reads as zeros, a garbled one fails to decode; either stops the export with one
    line naming the song and the array (pipeline/store.py, "integrity checks")."""
    try:
        for _ in ordered_map(pool, _fill, jobs, 4 * (int(workers or 0) or os.cpu_count() or 1)):
            pass
    except UnreadableRows as e:
        name = Path(e.src).name
        where = song_at(store.root, store.song_offsets, e.a) if name in STEP_ARRAYS else f"window rows {e.a}.."
        reason = str(e.exc).splitlines()[0][:160] if str(e.exc) else ""
        raise DamagedStore(f"{e.src}: {where}, array '{name}', rows {e.a}..{e.b - 1}: unreadable chunk "
                           f"({type(e.exc).__name__}: {reason}); {FIX}") from None
    copies = {name: tmp / f"{name}.npy" for name in STEP_ARRAYS}
    verify_copy(store.root, store.path, store.song_offsets, copies, max(1, int(store.hits.chunks[0])))


def _copy_jobs(src: zarr.Array, src_path: Path, dst_path: Path, block: int) -> list[tuple]:
    return [(str(src_path), str(dst_path), a, min(a + block, src.shape[0]))
            for a in range(0, src.shape[0], block)]


def narrowest_dtype(src: zarr.Array, block: int) -> np.dtype:
    """The smallest dtype that holds every value of `src` exactly: integers by their range (one
    streamed pass), floats and bools as they are."""
    dt = np.dtype(src.dtype)
    if dt.kind not in "iu" or src.shape[0] == 0:
        return dt
    lo, hi = 0, 0
    for a in range(0, src.shape[0], block):
        part = src[a:a + block]
        lo, hi = min(lo, int(part.min())), max(hi, int(part.max()))
    for cand in ("uint8", "int8", "uint16", "int16", "int32", "int64"):
        info = np.iinfo(cand)
        if info.min <= lo and hi <= info.max:
            return np.dtype(cand)
    return dt


def export(store_path: str | Path, metrics_path: str | Path, out_dir: str | Path, *,
           seq_len: int | None = None, stride: int | None = None,
           metric_names: list[str] | tuple[str, ...] | None = None,
           scheduler: str | None = None, workers: int | None = None) -> dict:
    """Write data/ready/ (see the module docstring) atomically; return its manifest.

    `seq_len`/`stride`, when given, must be those the metrics were computed with (checked first).
    `metric_names`: the window metrics to copy (None: every one, as format 1 did).
    The row copies run as tasks of one chunk each on `scheduler` (common.parallel: threads by
    default, or a dask.distributed address whose workers see the same file system).
    """
    store_path, metrics_path, out_dir = Path(store_path), Path(metrics_path), Path(out_dir)
    store = Store(store_path)
    if not (metrics_path / "zarr.json").exists():
        raise FileNotFoundError(f"{metrics_path}: no metrics store here (run `dvc repro metrics`)")
    metrics = zarr.open_group(str(metrics_path), mode="r")
    mattrs = dict(metrics.attrs)
    for key in ("seq_len", "stride"):
        if key not in mattrs:
            raise ValueError(f"{metrics_path}: attribute {key!r} missing (not a metrics stage output)")
    if seq_len is not None and (int(mattrs["seq_len"]), int(mattrs["stride"])) != (seq_len, stride):
        raise ValueError(f"{metrics_path}: metrics were computed with seq_len={mattrs['seq_len']}, "
                         f"stride={mattrs['stride']}, but seq_len={seq_len}, stride={stride} were "
                         "requested; rerun `dvc repro metrics` with the same window config")
    seq_len, stride = int(mattrs["seq_len"]), int(mattrs["stride"])
    if mattrs.get("store_hash") != store.hash:
        raise ValueError(f"{metrics_path}: computed from a store with hash {mattrs.get('store_hash')!r}, "
                         f"but {store_path} has {store.hash!r}; rerun `dvc repro metrics`")
    win = metrics["window"]
    per_song = _check_windows(metrics_path, store, win, seq_len, stride)
    lengths = np.diff(store.song_offsets)
    missing = int(((per_song == 0) & (lengths > 0)).sum())
    W = int(per_song.sum())
    if missing:
        log.warning("export: %d songs of %s have no metric windows (skipped by the metrics stage, "
                    "see its log); they are not training windows", missing, store_path)
    available = sorted(k for k in win.array_keys() if k not in _WINDOW_KEYS)
    names = available if metric_names is None else sorted(set(metric_names))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"export.metrics names {unknown}, which {metrics_path} does not hold "
                         f"(window metrics: {available})")

    with atomic_path(out_dir, marker="export") as tmp:
        tmp.mkdir()
        block = max(1, int(store.hits.chunks[0]))
        jobs = []
        for name in STEP_ARRAYS:
            _new_npy(store.root[name], tmp / f"{name}.npy")
            jobs += _copy_jobs(store.root[name], store_path / name, tmp / f"{name}.npy", block)
        np.save(tmp / "song_offsets.npy", store.song_offsets.astype(np.int64))
        np.save(tmp / "song_steps_per_bar.npy", store.meta["steps_per_bar"].astype(np.int32))
        for name in SONG_LABELS:
            values = store.meta[name]     # strings: a plain <U array (Zarr's StringDType does not cast)
            values = values.astype(np.float32) if name == "bpm" else np.array([str(v) for v in values], str)
            np.save(tmp / f"song_{name}.npy", values)
        counts = _write_tables(tmp, store, win, per_song)
        (tmp / "metrics").mkdir()
        shapes = {}
        for name in names:
            arr = win[name]
            if arr.shape[:1] != (W,):
                raise ValueError(f"{metrics_path}: window/{name} has {arr.shape[0]} rows, "
                                 f"window/song has {W}")
            # streamed like the rows: a [W, D, D] table at stride 1 can be gigabytes
            block = max(1, int(arr.chunks[0]))
            dtype = narrowest_dtype(arr, block)
            _new_npy(arr, tmp / "metrics" / f"{name}.npy", dtype)
            jobs += _copy_jobs(arr, metrics_path / "window" / name, tmp / "metrics" / f"{name}.npy", block)
            shapes[name] = {"shape": list(arr.shape[1:]), "dtype": dtype.str, "stored_dtype": np.dtype(arr.dtype).str}
        with executor(scheduler or "threads", workers) as pool:
            _copy_all(pool, jobs, workers, store, tmp)
        manifest = {
            "format_version": FORMAT_VERSION, "seq_len": seq_len, "stride": stride,
            "bars_per_phrase": int(mattrs.get("bars_per_phrase", 0)),
            "num_steps": int(store.hits.shape[0]), "num_songs": store.num_songs,
            "num_windows": W, "windows": counts, "window_columns": list(WINDOW_COLUMNS),
            "drum_names": store.drum_names, "metric_names": names, "metrics": shapes,
            "steps_per_bar": int(mattrs.get("steps_per_bar", 0)), "songs_without_windows": missing,
            "store": to_record(store_path, out_dir), "store_hash": store.hash,
            "metrics_store": to_record(metrics_path, out_dir),
            "metrics_hash": attrs_hash(mattrs)[:16], "song_labels": list(SONG_LABELS),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("export: %d steps, %d windows (%s), %d metrics -> %s", manifest["num_steps"],
             manifest["num_windows"], counts, len(names), out_dir)
    return manifest


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("export", FileNotFoundError, ValueError, LockHeld, OSError), \
            data_dir_lock(cfg, "export"), heartbeat("export"):
        export_from_config(cfg)


def export_from_config(cfg: DictConfig) -> dict:
    """`export` with the paths, window and `export.*` settings of a composed config."""
    return export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=int(cfg.window.seq_len),
                  stride=int(cfg.window.stride), metric_names=list(cfg.export.metrics),
                  scheduler=cfg.export.scheduler, workers=cfg.export.workers)


if __name__ == "__main__":
    main()
