"""The interim format between ingest and build (data/interim/): song records and shards.

    songs.jsonl      one record per song in store order (`record`; read with `iter_records`)
    shards/pNNNNN_dD one file per ingest task: its songs' per-step arrays concatenated along time,
                     one zstd frame behind a 20-byte header (`write_shard` / `read_shard`)

Its own module, so build (which only reads this) does not depend on the input sources.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from numcodecs import Zstd

from pipeline.store import FLOAT_FIELDS, INT_FIELDS, STEP_ARRAYS, STR_FIELDS, Song

SONGS_FILE = "songs.jsonl"   # interim/: one JSON record per song, in store order (manifest.json: the rest)
_ZSTD = Zstd(level=3)   # the store's codec and level (pipeline.store.compressors)
_SHARD_MAGIC = b"HDS1"   # interim shard: magic, rows and drums (<QQ), then zstd(every STEP_ARRAYS array's bytes)


def record(song: Song, shard: str, row: int, notes_mapped: int, unmapped: dict) -> dict:
    """The songs.jsonl record of one song: its metadata, where its rows are, and a digest of them."""
    rec = {f: getattr(song, f) for f in STR_FIELDS}
    rec.update({f: int(getattr(song, f)) for f in INT_FIELDS})
    rec.update({f: float(getattr(song, f)) for f in FLOAT_FIELDS})
    digest = hashlib.sha1()
    for name in STEP_ARRAYS:   # every per-step array's bytes in turn, without joining copies of them
        digest.update(np.ascontiguousarray(getattr(song, name)))
    digest = digest.hexdigest()
    rec.update(shard=shard, row=row, num_steps=song.num_steps, num_drums=int(song.hits.shape[1]),
               sections=song.sections.tolist(), sha1=digest, notes_mapped=notes_mapped,
               unmapped={str(p): n for p, n in unmapped.items()})
    return rec


def write_shard(path: Path, songs: list[Song]) -> None:
    """One file per task: a zstd frame of its songs' per-step arrays, concatenated along time. A plain
    file, not a Zarr group: creating a group and three arrays cost ~20 ms per shard, most of the
    stage once MIDI parsing got fast (benchmarks/midi_read.py)."""
    parts = [np.concatenate([getattr(s, name) for s in songs]).astype(dtype, copy=False)
             for name, dtype in STEP_ARRAYS.items()]
    rows, drums = parts[0].shape
    payload = _ZSTD.encode(b"".join(np.ascontiguousarray(a).data for a in parts))
    path.write_bytes(_SHARD_MAGIC + struct.pack("<QQ", rows, drums) + payload)


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """All per-step arrays of one interim shard (what build reads), read-only [rows, D] each."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: interim shard missing (rerun `python -m pipeline.ingest`)") from None
    if data[:4] != _SHARD_MAGIC:
        raise FileNotFoundError(f"{path}: not an interim shard of this version (rerun `python -m pipeline.ingest`)")
    rows, drums = struct.unpack("<QQ", data[4:20])
    raw, out, pos = _ZSTD.decode(data[20:]), {}, 0
    for name, dtype in STEP_ARRAYS.items():
        out[name] = np.frombuffer(raw, dtype, rows * drums, pos).reshape(rows, drums)
        pos += rows * drums * np.dtype(dtype).itemsize
    return out


def iter_records(interim: Path):
    """The song records of an interim folder, one at a time in store order (what build streams)."""
    with open(Path(interim) / SONGS_FILE) as fh:
        for line in fh:
            yield json.loads(line)
