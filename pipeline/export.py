"""The `export` stage: store.zarr + metrics.zarr -> data/ready/, flat arrays the trainer memory-maps.

Layout of `data/ready/` (every file a plain `.npy`, loadable with `np.load(mmap_mode="r")`):

    hits.npy, velocity.npy   uint8 [N, D]   the store's rows (ROW_ARRAYS), uncompressed, C order
    offset.npy               int8 [N, D]    each hit's timing in 1/128 step
    song_offsets.npy         int64 [S + 1]
    song_steps_per_bar.npy   int32 [S]
    windows_<split>.npy      int64 [W_split, 5]  columns WINDOW_COLUMNS: metrics row, song, start,
                                                 length, global row offset (= song_offsets[song] + start)
    metrics/<name>.npy       [W, ...]       row w = window/<name> of metrics.zarr (all splits)
    manifest.json            seq_len, stride, bars_per_phrase, drum names, metric names/shapes/dtypes,
                             store and metrics hashes, window counts per split

Why a copy and not the Zarr chunks themselves: the store is zstd-compressed (small on disk, fast to
build), and a compressed chunk cannot be memory-mapped. One sequential pass here turns it into
arrays any worker can map and fancy-index with no decompression and no per-item Python work.
See docs/data-path.md for the measured cost.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import zarr
from omegaconf import DictConfig

import pipeline.config
from kernels.spec import corpus_windows
from pipeline.atomic import atomic_path
from pipeline.store import ROW_ARRAYS, SPLITS, Store, attrs_hash

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WINDOW_COLUMNS = ("row", "song", "start", "length", "offset")
_WINDOW_KEYS = ("song", "start", "length")   # window/<key> arrays that index, not metrics


def _check_windows(metrics_path: Path, store: Store, song: np.ndarray, start: np.ndarray,
                   length: np.ndarray, seq_len: int, stride: int) -> int:
    """Every song with windows has exactly its expected windows; returns how many songs have none
    although they should (the metrics stage skips a song whose kernels failed, and says why)."""
    exp_song, exp_start = corpus_windows(store.song_offsets, seq_len, stride)
    song_len = np.diff(store.song_offsets)
    present = np.isin(exp_song, np.unique(song))
    missing = len(np.unique(exp_song[~present]))
    exp_song, exp_start = exp_song[present], exp_start[present]
    if (len(exp_song) != len(song) or not np.array_equal(exp_song, song)
            or not np.array_equal(exp_start, start)
            or not np.array_equal(np.minimum(song_len[song], seq_len), length)):
        raise ValueError(f"{metrics_path}: its windows ({len(song)}) are not the windows of "
                         f"{store.path} at seq_len={seq_len}, stride={stride} ({len(exp_song)} expected); "
                         "the metrics are stale: rerun the metrics stage (`dvc repro metrics`)")
    return missing


def _copy_rows(src: zarr.Array, dst_path: Path, block: int) -> None:
    """Stream a [N, ...] Zarr array into an .npy file chunk by chunk: memory bounded by `block` rows."""
    out = np.lib.format.open_memmap(dst_path, mode="w+", dtype=src.dtype, shape=src.shape)
    for a in range(0, src.shape[0], block):
        out[a:a + block] = src[a:a + block]
    out.flush()
    del out


def export(store_path: str | Path, metrics_path: str | Path, out_dir: str | Path, *,
           seq_len: int | None = None, stride: int | None = None) -> dict:
    """Write data/ready/ (see the module docstring) atomically; return its manifest.

    `seq_len`/`stride`, when given, must be those the metrics were computed with (checked first).
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
    song, start, length = (np.asarray(win[k][:], np.int64) for k in _WINDOW_KEYS)
    missing = _check_windows(metrics_path, store, song, start, length, seq_len, stride)
    if missing:
        log.warning("export: %d songs of %s have no metric windows (skipped by the metrics stage, "
                    "see its log); they are not training windows", missing, store_path)
    names = sorted(k for k in win.array_keys() if k not in _WINDOW_KEYS)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        block = max(1, int(store.hits.chunks[0]))
        for name in ROW_ARRAYS:
            _copy_rows(store.root[name], tmp / f"{name}.npy", block)
        np.save(tmp / "song_offsets.npy", store.song_offsets.astype(np.int64))
        np.save(tmp / "song_steps_per_bar.npy", store.meta["steps_per_bar"].astype(np.int32))
        offset = store.song_offsets[song] + start
        table = np.stack([np.arange(len(song), dtype=np.int64), song, start, length, offset], axis=1)
        split_of_window = store.meta["split"][song] if len(song) else np.zeros(0, str)
        counts = {}
        for split in SPLITS:
            rows = table[split_of_window == split] if len(song) else table
            np.save(tmp / f"windows_{split}.npy", np.ascontiguousarray(rows, dtype=np.int64))
            counts[split] = int(len(rows))
        (tmp / "metrics").mkdir()
        shapes = {}
        for name in names:
            arr = win[name]
            if arr.shape[:1] != (len(song),):
                raise ValueError(f"{metrics_path}: window/{name} has {arr.shape[0]} rows, "
                                 f"window/song has {len(song)}")
            # streamed like the rows: a [W, D, D] table at stride 1 can be gigabytes
            _copy_rows(arr, tmp / "metrics" / f"{name}.npy", max(1, int(arr.chunks[0])))
            shapes[name] = {"shape": list(arr.shape[1:]), "dtype": np.dtype(arr.dtype).str}
        manifest = {
            "format_version": FORMAT_VERSION, "seq_len": seq_len, "stride": stride,
            "bars_per_phrase": int(mattrs.get("bars_per_phrase", 0)),
            "num_steps": int(store.hits.shape[0]), "num_songs": store.num_songs,
            "num_windows": int(len(song)), "windows": counts, "window_columns": list(WINDOW_COLUMNS),
            "drum_names": store.drum_names, "metric_names": names, "metrics": shapes,
            "steps_per_bar": int(mattrs.get("steps_per_bar", 0)), "songs_without_windows": missing,
            "store": str(store_path), "store_hash": store.hash,
            "metrics_hash": attrs_hash(mattrs)[:16],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("export: %d steps, %d windows (%s), %d metrics -> %s", manifest["num_steps"],
             manifest["num_windows"], counts, len(names), out_dir)
    return manifest


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("export", FileNotFoundError, ValueError):
        export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready,
               seq_len=int(cfg.window.seq_len), stride=int(cfg.window.stride))


if __name__ == "__main__":
    main()
