"""Stage `build`: data/interim/ (ingest's songs) -> data/store.zarr (layout: pipeline/store.py).

    python -m pipeline.build [data=...] [store.chunk_steps=...]

The store is created empty at a temporary sibling path, then one dask task per chunk along time
loads just the songs that overlap its rows and writes that chunk. Tasks never share a chunk, so they
write in parallel without locks, and a task holds one chunk plus the songs crossing it: memory is
bounded by the chunk size, not by the dataset. The temporary store is renamed onto
`paths.store` only when complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import dask
import hydra
import numpy as np
import zarr
from omegaconf import DictConfig

import pipeline.config
from pipeline.atomic import atomic_path
from pipeline.lock import LockHeld, data_dir_lock
from pipeline.store import Song, create_store, write_metadata

log = logging.getLogger(__name__)


def load_manifest(interim: Path) -> dict:
    path = Path(interim) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ingested songs here (run `python -m pipeline.ingest` first)")
    return json.loads(path.read_text())


def source_hash(manifest: dict) -> str:
    """sha256 over the drum map, grid and every song's metadata and content digest (sha1 of its rows).

    The interim file names are left out: they depend on how ingest batched its tasks
    (`ingest.files_per_task`), not on the data, and must not make derived outputs look stale."""
    songs = [{k: v for k, v in r.items() if k != "file"} for r in manifest.get("songs", [])]
    return hashlib.sha256(json.dumps({**manifest, "songs": songs}, sort_keys=True).encode()).hexdigest()


def _write_chunk(root: zarr.Group, songs_dir: Path, records: list[dict], offsets: np.ndarray,
                 start: int, stop: int) -> int:
    """Fill rows [start, stop) of hits and velocity from the songs overlapping them."""
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    hits = np.zeros((stop - start, root["hits"].shape[1]), np.uint8)
    vel = np.zeros_like(hits)
    i = first
    while i < len(records) and offsets[i] < stop:
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b > start:
            lo, hi = max(a, start), min(b, stop)
            with np.load(songs_dir / records[i]["file"], allow_pickle=False) as z:
                hits[lo - start:hi - start] = z["hits"][lo - a:hi - a]
                vel[lo - start:hi - start] = z["velocity"][lo - a:hi - a]
        i += 1
    root["hits"][start:stop] = hits
    root["velocity"][start:stop] = vel
    return int(hits.sum())


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
        write = dask.delayed(partial(_write_chunk, root, interim / "songs", records, offsets))
        tasks = [write(s, min(s + chunk, total)) for s in range(0, total, chunk)]
        hit_counts = _compute(tasks, cfg.store)
        write_metadata(root, meta_songs, attrs)
        root.attrs["num_hits"] = int(sum(hit_counts))
    summary = {"songs": len(records), "steps": total, "hits": int(sum(hit_counts)), "chunks": len(tasks),
               "store": str(cfg.paths.store)}
    log.info("build: %(songs)d songs, %(steps)d steps, %(hits)d hits in %(chunks)d chunks -> %(store)s", summary)
    return summary


def _compute(tasks: list, store_cfg) -> tuple:
    """dask.compute that returns only once every task has stopped. On a failure dask raises at once
    while other threads still write chunks into the temporary store; atomic_path then removes it,
    and a late chunk would recreate it as a stale temporary."""
    if store_cfg.scheduler != "threads":
        return dask.compute(*tasks, scheduler=store_cfg.scheduler, num_workers=int(store_cfg.workers))
    with ThreadPoolExecutor(int(store_cfg.workers)) as pool:   # leaving waits for running tasks
        return dask.compute(*tasks, scheduler="threads", pool=pool)


def _meta_song(r: dict) -> Song:
    empty = np.zeros((r["num_steps"], 0), np.uint8)  # zero-byte stand-in that still knows its length
    return Song(name=r["name"], hits=empty, velocity=empty, source=r["source"], style=r["style"],
                split=r["split"], drummer=r["drummer"], beat_type=r["beat_type"],
                steps_per_bar=r["steps_per_bar"], beats_per_bar=r["beats_per_bar"], bpm=r["bpm"],
                sections=np.asarray(r["sections"], np.int64).reshape(-1, 2))


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("build", FileNotFoundError, LockHeld), data_dir_lock(cfg, "build"):
        build(cfg)


if __name__ == "__main__":
    main()
