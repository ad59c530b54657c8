"""The interim format between ingest and build (data/interim/): song records and shards.

    songs.jsonl      one record per song in store order (`record`; read with `iter_records`)
    shards/pNNNNN_dD one file per ingest task: its songs' per-step arrays concatenated along time
                     (`write_shard` / `read_shard`)

Shard format 2 (`HDS2`): magic, rows and drums (<QQ), then per array in STEP_ARRAYS order its number of
frames (<Q) and each frame's compressed length (<Q) and zstd frame, a frame per BLOCK bytes of the
array. A task of one long song compresses each array where it lies, a block at a time, with no
joined copy of all three: the memory of writing is the song itself plus one block's buffers, not
twice or three times the song. Format 1 (`HDS1`: one frame of every array's bytes joined) is still read.

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
_V1, _V2 = b"HDS1", b"HDS2"   # shard formats: 1 is still read
BLOCK = 8 << 20   # raw bytes per zstd frame of a shard


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


def write_shard(path: Path, songs: list) -> None:
    """A zstd frame per per-step array of `songs` (concatenated along time; one song: not copied)."""
    with open(path, "wb") as fh:
        head = None
        for name, dtype in STEP_ARRAYS.items():
            arrays = [getattr(s, name) for s in songs]
            part = (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)).astype(dtype, copy=False)
            if head is None:
                head = part.shape
                fh.write(_V2 + struct.pack("<QQ", *head))
            flat = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
            fh.write(struct.pack("<Q", -(-len(flat) // BLOCK)))
            for a in range(0, len(flat), BLOCK):
                frame = _ZSTD.encode(flat[a:a + BLOCK])
                fh.write(struct.pack("<Q", len(frame)))
                fh.write(frame)
            del part, flat


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """All per-step arrays of one interim shard (what build reads), read-only [rows, D] each."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: interim shard missing (rerun `python -m pipeline.ingest`)") from None
    if data[:4] not in (_V1, _V2):
        raise FileNotFoundError(f"{path}: not an interim shard of this version (rerun `python -m pipeline.ingest`)")
    rows, drums = struct.unpack("<QQ", data[4:20])
    out, pos = {}, 20
    if data[:4] == _V1:
        raw, at = _ZSTD.decode(data[20:]), 0
        for name, dtype in STEP_ARRAYS.items():
            out[name] = np.frombuffer(raw, dtype, rows * drums, at).reshape(rows, drums)
            at += rows * drums * np.dtype(dtype).itemsize
        return out
    for name, dtype in STEP_ARRAYS.items():
        (frames,), pos = struct.unpack("<Q", data[pos:pos + 8]), pos + 8
        arr = np.empty(rows * drums, dtype)
        raw, at = arr.view(np.uint8), 0
        for _ in range(frames):
            (size,) = struct.unpack("<Q", data[pos:pos + 8])
            block = np.frombuffer(_ZSTD.decode(data[pos + 8:pos + 8 + size]), np.uint8)
            raw[at:at + len(block)] = block
            at, pos = at + len(block), pos + 8 + size
        arr.flags.writeable = False
        out[name] = arr.reshape(rows, drums)
    return out


def iter_records(interim: Path):
    """The song records of an interim folder, one at a time in store order (what build streams)."""
    with open(Path(interim) / SONGS_FILE) as fh:
        for line in fh:
            yield json.loads(line)
