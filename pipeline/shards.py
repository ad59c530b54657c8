"""Interim shards: one file per ingest task holding its songs' per-step arrays (STEP_ARRAYS),
concatenated along time.

Format 2 (`HDS2`): magic, rows and drums (<QQ), then per array in STEP_ARRAYS order its number of
frames (<Q) and each frame's compressed length (<Q) and zstd frame, a frame per BLOCK bytes of the
array. A task of one long song compresses each array where it lies, a block at a time, with no
joined copy of all three: the memory of writing is the song itself plus one block's buffers, not
twice or three times the song. Format 1 (`HDS1`: one frame
of every array's bytes joined) is still read.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from numcodecs import Zstd

from pipeline.store import STEP_ARRAYS

_ZSTD = Zstd(level=3)   # the store's codec and level (pipeline.store.compressors)
_V1, _V2 = b"HDS1", b"HDS2"
BLOCK = 8 << 20   # raw bytes per frame


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
