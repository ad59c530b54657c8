"""Per-song sums of every per-step array, recorded when the store is built and compared on reading.

A Zarr chunk that is missing reads as its fill value (zeros) and a garbled one fails in the codec:
without a check, the metrics and the export of a damaged store succeed with fewer hits than it
holds. `checks/<array>` (int64 [S], one per STEP_ARRAYS entry) holds the sum of each song's rows;
readers compare what they read (`verify_songs`, `SongSums`) and stop with one line naming the song
and the array. A store built before these arrays existed is read as before (no check).
"""
from __future__ import annotations

import numpy as np
import zarr

CHECKS = "checks"   # group of the store: checks/<array name> int64 [S]
FIX = "the store is damaged: rebuild it (`dvc repro build`, or python -m pipeline.build)"


def _name(root: zarr.Group, i: int) -> str:
    return str(np.asarray(root["songs"]["name"][i:i + 1])[0])


class DamagedStore(ValueError):
    """What was read from the store is not what was written; the message names the song and the array."""


def _per_row(arr) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(len(arr), int(np.prod(arr.shape[1:], dtype=np.int64))).sum(axis=1, dtype=np.int64)


def song_sums(arr: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64 [S]: the sum of each song's rows of `arr`, whose rows are offsets[0]..offsets[-1]."""
    per_row = _per_row(arr)
    cum = np.concatenate([np.zeros(1, np.int64), np.cumsum(per_row)])
    rel = np.asarray(offsets, np.int64) - int(offsets[0])
    return cum[rel[1:]] - cum[rel[:-1]]


def write_checks(root: zarr.Group, sums: dict[str, np.ndarray]) -> None:
    group = root.require_group(CHECKS)
    for name, values in sums.items():
        group.create_array(name, shape=values.shape, chunks=(max(1, min(len(values), 16384)),),
                           dtype="int64", fill_value=0)[:] = values


def recorded(root: zarr.Group, name: str, b0: int, b1: int) -> np.ndarray | None:
    """checks/<name> of songs b0..b1-1, or None for a store built before the checks."""
    if CHECKS not in root or name not in root[CHECKS]:
        return None
    return np.asarray(root[CHECKS][name][b0:b1])


def mismatch(root: zarr.Group, where, name: str, b0: int, got: np.ndarray) -> None:
    """Raise DamagedStore for the first of songs b0.. whose sum of `name` is not the recorded one."""
    want = recorded(root, name, b0, b0 + len(got))
    if want is None:
        return
    bad = np.flatnonzero(want != got)
    if len(bad):
        i = b0 + int(bad[0])
        raise DamagedStore(f"{where}: song {i} ({_name(root, i)!r}), array '{name}': its rows sum to "
                           f"{int(got[bad[0]])}, the build recorded {int(want[bad[0]])} (a chunk is missing or "
                           f"damaged; {len(bad)} songs of {b0}..{b0 + len(got) - 1} differ); {FIX}")


def read_rows(root: zarr.Group, where, name: str, offsets, first_song: int = 0) -> np.ndarray:
    """Rows offsets[0]..offsets[-1] of `name` (the songs first_song.. whose store rows `offsets`
    bound), or DamagedStore naming the first song whose rows fail to decode."""
    offsets = np.asarray(offsets, np.int64)
    try:
        return np.asarray(root[name][int(offsets[0]):int(offsets[-1])])
    except Exception as exc:   # codec errors come as many types (zstd, numcodecs, ValueError, ...)
        error = exc
    for j in range(len(offsets) - 1):   # the error path only: find the song, one read per song
        try:
            root[name][int(offsets[j]):int(offsets[j + 1])]
        except Exception as exc:
            error, first_song, offsets = exc, first_song + j, offsets[j:j + 2]
            break
    reason = str(error).splitlines()[0][:160] if str(error) else ""
    raise DamagedStore(f"{where}: song {first_song} ({_name(root, first_song)!r}), array '{name}', "
                       f"rows {int(offsets[0])}..{int(offsets[1]) - 1}: unreadable chunk "
                       f"({type(error).__name__}: {reason}); {FIX}")


def read_songs(paths: list[str], offsets, first_song: int) -> list[np.ndarray]:
    """The rows of songs first_song.. of each per-step array path (all of one store), checked
    against the sums the build recorded: what the metrics stage reads."""
    where = str(paths[0]).rsplit("/", 1)[0]
    root = zarr.open_group(where, mode="r")
    out = []
    for path in paths:
        name = str(path).rsplit("/", 1)[1]
        arr = read_rows(root, where, name, offsets, first_song)
        mismatch(root, where, name, first_song, song_sums(arr, offsets))
        out.append(arr)
    return out


class SongSums:
    """Per-song sums accumulated over blocks of rows in any order (the export's copies), then compared."""

    def __init__(self, offsets: np.ndarray, names):
        self.offsets = np.asarray(offsets, np.int64)
        self.sums = {n: np.zeros(len(self.offsets) - 1, np.int64) for n in names}

    def add(self, name: str, a: int, block: np.ndarray) -> None:
        per_row = _per_row(block)
        song = np.searchsorted(self.offsets, np.arange(a, a + len(block)), side="right") - 1
        self.sums[name] += np.bincount(song, weights=per_row, minlength=len(self.sums[name])).astype(np.int64)

    def verify(self, root: zarr.Group, where) -> None:
        """Compare with checks/<array>; a store from before them: the total hits with its num_hits."""
        for name, got in self.sums.items():
            mismatch(root, where, name, 0, got)
            total = root.attrs.get("num_hits")
            if name == "hits" and recorded(root, name, 0, 0) is None and total is not None and got.sum() != total:
                raise DamagedStore(f"{where}: array 'hits' holds {int(got.sum())} hits, its metadata says "
                                   f"{int(total)} (a chunk is missing or damaged); {FIX}")


def verify_copy(root: zarr.Group, where, offsets, copies: dict, block: int) -> None:
    """The per-song sums of copied arrays (name -> .npy path) against the store's record, each
    read `block` rows at a time through a file handle (a memory map would keep its pages resident)."""
    sums = SongSums(offsets, copies)
    for name, path in copies.items():
        with open(path, "rb") as fh:
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(fh)]
            shape, _, dtype = read(fh)
            row = int(np.prod(shape[1:], dtype=np.int64))
            for a in range(0, shape[0], block):
                n = min(block, shape[0] - a)
                sums.add(name, a, np.fromfile(fh, dtype, n * row).reshape(n, row))
    sums.verify(root, where)


def song_at(root: zarr.Group, offsets, row: int) -> str:
    """'song i (name)' of the song holding store row `row`."""
    i = int(np.searchsorted(np.asarray(offsets), row, side="right")) - 1
    return f"song {i} ({_name(root, i)!r})"
