"""Stage `build`: data/interim/ (ingest's songs) -> data/store.zarr (layout: pipeline/store.py).

    python -m pipeline.build [data=...] [store.chunk_steps=...]

The store is created empty at a temporary sibling path, then one dask task per chunk along time
reads the interim shards holding the songs that overlap its rows and writes that chunk. Tasks never share a chunk, so they
write in parallel without locks, and a task holds one chunk plus the songs crossing it: memory is
bounded by the chunk size, not by the dataset. The temporary store is renamed onto
`paths.store` only when complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import dask
import hydra
import numpy as np
import zarr
from omegaconf import DictConfig

import pipeline.config
from pipeline.atomic import atomic_path
from pipeline.ingest import read_shard
from pipeline.lock import LockHeld, data_dir_lock
from pipeline.progress import heartbeat
from pipeline.parallel import dask_scheduler
from pipeline.store import STEP_ARRAYS, Song, create_store, write_metadata

log = logging.getLogger(__name__)
_PLACEMENT = ("shard", "row")   # manifest keys that say where a song's rows are, not what they are


def load_manifest(interim: Path) -> dict:
    path = Path(interim) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ingested songs here (run `python -m pipeline.ingest` first)")
    return json.loads(path.read_text())


def source_hash(manifest: dict) -> str:
    """sha256 over the drum map, grid and every song's metadata and content digest (sha1 of its rows).

    Where a song lies in the interim shards is left out: it depends on how ingest batched its tasks
    (`ingest.files_per_task`), not on the data, and must not make derived outputs look stale."""
    songs = [{k: v for k, v in r.items() if k not in _PLACEMENT} for r in manifest.get("songs", [])]
    return hashlib.sha256(json.dumps({**manifest, "songs": songs}, sort_keys=True).encode()).hexdigest()


def _write_chunk(root: zarr.Group, shards_dir: Path, records: list[dict], offsets: np.ndarray,
                 start: int, stop: int) -> int:
    """Fill rows [start, stop) of every per-step array from the songs overlapping them; each shard
    they live in is read once (a shard is one compressed chunk)."""
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    D = root["hits"].shape[1]
    out = {name: np.zeros((stop - start, D), dtype) for name, dtype in STEP_ARRAYS.items()}
    shards: dict[str, dict] = {}
    i = first
    while i < len(records) and offsets[i] < stop:
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b > start:
            lo, hi = max(a, start), min(b, stop)
            rec = records[i]
            if rec["shard"] not in shards:
                shards[rec["shard"]] = read_shard(shards_dir / rec["shard"])
            r0 = int(rec["row"]) - a
            for name, arr in out.items():
                arr[lo - start:hi - start] = shards[rec["shard"]][name][r0 + lo:r0 + hi]
        i += 1
    for name, arr in out.items():
        root[name][start:stop] = arr
    return int(out["hits"].sum())


def _settled(fn, *args):
    """fn(*args), or the exception it raised: a failing chunk must not abort the compute while other
    chunk tasks still write into the temporary store that the failure is about to remove."""
    try:
        return fn(*args)
    except Exception as e:  # re-raised by _raise_first once every task has finished
        return e


def _raise_first(results: tuple) -> tuple:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def build(cfg: DictConfig) -> dict:
    """Build the store; returns a summary (songs, steps, hits, chunks)."""
    interim = Path(cfg.paths.interim)
    manifest = load_manifest(interim)
    records = manifest["songs"]
    lengths = np.array([r["num_steps"] for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total, num_drums = int(offsets[-1]), len(manifest["drum_names"])
    chunk = max(1, min(int(cfg.store.chunk_steps), total))
    # Metadata only: write_metadata needs each song's length, not its rows.
    meta_songs = [_meta_song(r) for r in records]
    attrs = {k: manifest[k] for k in ("drum_names", "drum_pitches", "mapping", "steps_per_quarter")}
    attrs["source_hash"] = source_hash(manifest)

    with atomic_path(cfg.paths.store, marker="build") as tmp:
        root = create_store(tmp, num_songs=len(records), num_steps=total, num_drums=num_drums,
                            chunk_steps=chunk, compressor=cfg.store.compressor)
        # partial: dask would otherwise walk the song records once per task looking for collections
        write = dask.delayed(partial(_settled, _write_chunk, root, interim / "shards", records, offsets))
        tasks = [write(s, min(s + chunk, total)) for s in range(0, total, chunk)]
        with dask_scheduler(cfg.store.scheduler, cfg.store.workers) as where_to_run:
            hit_counts = _raise_first(dask.compute(*tasks, **where_to_run))
        write_metadata(root, meta_songs, attrs)
        root.attrs["num_hits"] = int(sum(hit_counts))
    summary = {"songs": len(records), "steps": total, "hits": int(sum(hit_counts)), "chunks": len(tasks),
               "store": str(cfg.paths.store)}
    log.info("build: %(songs)d songs, %(steps)d steps, %(hits)d hits in %(chunks)d chunks -> %(store)s", summary)
    return summary


def _meta_song(r: dict) -> Song:
    empty = np.zeros((r["num_steps"], 0), np.uint8)  # zero-byte stand-in that still knows its length
    return Song(name=r["name"], hits=empty, velocity=empty, source=r["source"], style=r["style"],
                split=r["split"], drummer=r["drummer"], beat_type=r["beat_type"],
                steps_per_bar=r["steps_per_bar"], beats_per_bar=r["beats_per_bar"], bpm=r["bpm"],
                sections=np.asarray(r["sections"], np.int64).reshape(-1, 2))


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("build", FileNotFoundError, LockHeld), data_dir_lock(cfg, "build"), heartbeat("build"):
        build(cfg)


if __name__ == "__main__":
    main()
