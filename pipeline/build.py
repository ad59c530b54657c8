"""Stage `build`: data/interim/ (ingest's songs) -> data/store.zarr (layout: pipeline/store.py).

    python -m pipeline.build [data=...] [store.chunk_steps=...]

The store is created empty at a temporary sibling path, then one task per chunk along time
(`store.scheduler`: threads, processes or a dask.distributed address) reads the interim shards
holding the songs that overlap its rows and writes that chunk, while the driver streams the song
records and writes the metadata a block of songs at a time. Tasks never share a chunk, so they
write in parallel without locks, and a task holds one chunk plus the songs crossing it: memory is
bounded by the chunk size, not by the dataset. The temporary store is renamed onto
`paths.store` only when complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import zarr
from omegaconf import DictConfig

import common.config
from common.atomic import OutputRefused, atomic_path
from pipeline.interim import iter_records, read_shard
from common.lock import LockHeld, data_dir_lock
from common.progress import heartbeat
from common.parallel import executor, ordered_map
from pipeline.splits import TuneSplit
from pipeline.store import STEP_ARRAYS, MetadataWriter, Song, create_store, write_checks

log = logging.getLogger(__name__)
_PLACEMENT = ("shard", "row")   # manifest keys that say where a song's rows are, not what they are


def load_manifest(interim: Path) -> dict:
    """interim/manifest.json: drum map, grid and counts (the song records: `iter_records`)."""
    path = Path(interim) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ingested songs here (run `python -m pipeline.ingest` first)")
    manifest = json.loads(path.read_text())
    if "songs_file" not in manifest:
        raise FileNotFoundError(f"{path}: written by an older ingest (songs inside the manifest); "
                                "rerun `python -m pipeline.ingest`")
    return manifest


class SourceHash:
    """sha256 over the drum map, grid and every song's metadata and content digest (sha1 of its rows),
    fed one record at a time: the sha256 of the JSON text `{drum map and grid keys..., "songs": [records]}`
    (keys sorted), the same digest as hashing the whole manifest at once, without holding it.

    Where a song lies in the interim shards is left out: it depends on how ingest batched its tasks
    (`ingest.files_per_task`), not on the data, and must not make derived outputs look stale."""

    KEYS = ("drum_names", "drum_pitches", "mapping", "source", "steps_per_quarter")

    def __init__(self, manifest: dict):
        head = {k: manifest[k] for k in self.KEYS}
        before = json.dumps({k: v for k, v in head.items() if k < "songs"}, sort_keys=True)
        after = json.dumps({k: v for k, v in head.items() if k > "songs"}, sort_keys=True)
        self._h = hashlib.sha256((before[:-1] + ', "songs": [').encode())
        self._tail, self._sep = "], " + after[1:], ""

    def add(self, rec: dict) -> None:
        self._h.update((self._sep + json.dumps({k: v for k, v in rec.items() if k not in _PLACEMENT},
                                               sort_keys=True)).encode())
        self._sep = ", "

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(self._tail.encode())
        return h.hexdigest()


def _write_chunk(root: zarr.Group, shards_dir: Path, job: tuple) -> int:
    """Fill rows [start, stop) of every per-step array from the songs overlapping them (`pieces`:
    shard, first row in the shard, song's first and end row in the store); each shard is read once
    (a shard is one compressed chunk)."""
    start, stop, pieces = job[:3]
    D = root["hits"].shape[1]
    out = {name: np.zeros((stop - start, D), dtype) for name, dtype in STEP_ARRAYS.items()}
    shards: dict[str, dict] = {}
    for shard, row, a, b, *_ in pieces:
        lo, hi = max(a, start), min(b, stop)
        if shard not in shards:
            shards[shard] = read_shard(shards_dir / shard)
        r0 = int(row) - a
        for name, arr in out.items():
            arr[lo - start:hi - start] = shards[shard][name][r0 + lo:r0 + hi]
    for name, arr in out.items():
        root[name][start:stop] = arr
    return int(out["hits"].sum()), _piece_sums(out, start, stop, pieces)


def _piece_sums(out: dict, start: int, stop: int, pieces: list) -> list[tuple[int, dict]]:
    """(song index, {array: sum of the song's rows in this chunk}) of every song in the chunk: the
    build adds them up into checks/<array> (pipeline/store.py, "integrity checks")."""
    sums = []
    for _, _, a, b, song in pieces:
        lo, hi = max(a, start) - start, min(b, stop) - start
        sums.append((song, {name: int(arr[lo:hi].sum(dtype=np.int64)) for name, arr in out.items()}))
    return sums


def _chunk_jobs(records, total: int, chunk: int, on_record, failed: list):
    """(start, stop, pieces) of every chunk in row order, from the records read one at a time; holds
    only the songs crossing the current chunk. Stops early once a chunk task has failed."""
    start, pos, pieces = 0, 0, []
    for song, rec in enumerate(records):
        on_record(rec)
        pieces.append((rec["shard"], rec["row"], pos, pos + rec["num_steps"], song))
        pos += rec["num_steps"]
        while start < total and pos >= min(start + chunk, total):   # this chunk has all its songs
            stop = min(start + chunk, total)
            yield start, stop, [p for p in pieces if p[3] > start and p[2] < stop]
            start, pieces = stop, [p for p in pieces if p[3] > stop]
            if failed:
                return


def _settled(fn, *args):
    """fn(*args), or the exception it raised: a failing chunk must not abort the stage while other
    chunk tasks still write into the temporary store that the failure is about to remove."""
    try:
        return fn(*args)
    except Exception as e:  # re-raised by build once every submitted task has finished
        return e


def build(cfg: DictConfig) -> dict:
    """Build the store; returns a summary (songs, steps, hits, chunks).

    The song records stream from interim/songs.jsonl: the driver turns them into chunk jobs and
    metadata blocks as it reads them (`MetadataWriter`), so its memory does not grow with the number
    of songs; at most a few chunk tasks are in flight."""
    interim = Path(cfg.paths.interim)
    manifest = load_manifest(interim)
    total, num_drums, num_songs = int(manifest["num_steps"]), len(manifest["drum_names"]), int(manifest["num_songs"])
    chunk = max(1, min(int(cfg.store.chunk_steps), total))
    digest = SourceHash(manifest)
    attrs = {k: manifest[k] for k in ("drum_names", "drum_pitches", "mapping", "steps_per_quarter")}
    workers = int(cfg.store.workers or 0) or os.cpu_count() or 1
    hits, chunks, failed = 0, 0, []
    sums = {name: np.zeros(num_songs, np.int64) for name in STEP_ARRAYS}   # per song (pipeline.store integrity checks)

    with atomic_path(cfg.paths.store, marker="build") as tmp:
        root = create_store(tmp, num_songs=num_songs, num_steps=total, num_drums=num_drums,
                            chunk_steps=chunk, compressor=cfg.store.compressor,
                            num_sections=int(manifest["num_sections"]))
        meta = MetadataWriter(root)
        tune = TuneSplit(iter_records(interim), float(cfg.ingest.get("tune_share", 0.1)))

        def on_record(rec):   # metadata only: MetadataWriter needs each song's length, not its rows
            rec = tune.assign(rec)    # the tune split, carved out of train (pipeline/splits.py)
            digest.add(rec)
            meta.add(_meta_song(rec))
        jobs = _chunk_jobs(iter_records(interim), total, chunk, on_record, failed)
        with executor(cfg.store.scheduler, cfg.store.workers) as pool:
            for r in ordered_map(pool, partial(_settled, _write_chunk, root, interim / "shards"), jobs, 2 * workers):
                if isinstance(r, Exception):
                    failed.append(r)
                else:
                    hits, chunks = hits + r[0], chunks + 1
                    for song, part in r[1]:
                        for name, value in part.items():
                            sums[name][song] += value
        if failed:
            raise failed[0]
        meta.close({**attrs, "source_hash": digest.hexdigest()})
        root.attrs["num_hits"] = hits
        write_checks(root, sums)
    summary = {"songs": num_songs, "steps": total, "hits": hits, "chunks": chunks, "store": str(cfg.paths.store)}
    log.info("build: %(songs)d songs, %(steps)d steps, %(hits)d hits in %(chunks)d chunks -> %(store)s", summary)
    return summary


def _meta_song(r: dict) -> Song:
    empty = np.zeros((r["num_steps"], 0), np.uint8)  # zero-byte stand-in that still knows its length
    return Song(name=r["name"], hits=empty, velocity=empty, source=r["source"], style=r["style"],
                split=r["split"], drummer=r["drummer"], beat_type=r["beat_type"],
                steps_per_bar=r["steps_per_bar"], beats_per_bar=r["beats_per_bar"], bpm=r["bpm"],
                sections=np.asarray(r["sections"], np.int64).reshape(-1, 2))


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("build", FileNotFoundError, LockHeld, OSError, OutputRefused), data_dir_lock(cfg, "build"), heartbeat("build"):
        build(cfg)


if __name__ == "__main__":
    main()
