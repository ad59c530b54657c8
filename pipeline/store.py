"""The on-disk store of all songs: one Zarr v3 group, time-major, chunked along time.

Layout (SCHEMA_VERSION 2) of `data/store.zarr`:

    hits          uint8  [total_steps, D]  1 where a drum is hit at a step, else 0
    velocity      uint8  [total_steps, D]  MIDI velocity 1..127 of each hit, 0 elsewhere
    offset        int8   [total_steps, D]  timing of each hit in 1/128 step (-64..64, < 0 early), 0 elsewhere
    song_offsets  int64  [S + 1]           song i occupies rows song_offsets[i]:song_offsets[i+1]
    songs/name, songs/source, songs/style, songs/split, songs/drummer, songs/beat_type   str [S]
    songs/steps_per_bar, songs/beats_per_bar  int32 [S]
    songs/bpm     float32 [S]
    section_offsets int64 [S + 1], sections int64 [K, 2]   song-relative (start, end) steps, may be empty
    checks/hits, checks/velocity, checks/offset  int64 [S]  each song's sum of that array's rows, recorded
                  by the build and compared by readers (the integrity checks below; absent in older stores)
    attrs: schema_version, drum_names, drum_pitches, mapping, steps_per_quarter, num_songs,
           num_steps, num_hits, source_hash, splits (name -> song count)

Songs are concatenated along time; a window never crosses a song boundary (song_offsets say where).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from common.atomic import exists, is_url, join

SCHEMA_VERSION = 2      # 2: `offset` (microtiming) beside hits and velocity
SPLITS = ("train", "validation", "test")
ALL_SPLITS = SPLITS + ("tune",)   # tune: carved out of train by pipeline.build (pipeline/splits.py)
STR_FIELDS = ("name", "source", "style", "split", "drummer", "beat_type")
INT_FIELDS = ("steps_per_bar", "beats_per_bar")
FLOAT_FIELDS = ("bpm",)
# Per-step arrays: [total_steps, D] in the store, [T, D] in a Song, in the interim shards. Every
# stage that moves rows loops over this table, so a new per-step array is one entry here.
STEP_ARRAYS = {"hits": "uint8", "velocity": "uint8", "offset": "int8"}   # offset: 1/128 step


@dataclass
class Song:
    """One validated, quantised song: what ingest produces and the store holds."""

    name: str
    hits: np.ndarray                 # uint8 [T, D], 0/1
    velocity: np.ndarray             # uint8 [T, D], 0 where no hit
    source: str = ""
    style: str = ""
    split: str = ""                  # "" until assigned (metadata or hash split)
    drummer: str = ""
    beat_type: str = ""
    steps_per_bar: int = 16
    beats_per_bar: int = 4
    bpm: float = 120.0
    sections: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    offset: np.ndarray | None = None  # int8 [T, D], 1/128 step, 0 where no hit; None -> all on the grid

    def __post_init__(self):
        if self.offset is None:
            self.offset = np.zeros(np.shape(self.hits), np.int8)

    @property
    def num_steps(self) -> int:
        return int(self.hits.shape[0])


def compressors(name: str):
    if name in (None, "none", "None"):
        return None
    if name == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    raise ValueError(f"store.compressor must be 'zstd' or 'none', got {name!r}")


SONG_CHUNK = 16384   # songs per chunk of every per-song array: metadata is written a chunk at a time


def create_store(path: str | Path, *, num_songs: int, num_steps: int, num_drums: int,
                 chunk_steps: int = 65536, compressor: str = "zstd", num_sections: int = 0) -> zarr.Group:
    """Create an empty store of the given size; the caller fills rows (any order) and metadata
    (`MetadataWriter`: in song order, a chunk of songs at a time)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    chunks = (max(1, min(int(chunk_steps), max(num_steps, 1))), num_drums)
    for name, dtype in STEP_ARRAYS.items():
        root.create_array(name, shape=(num_steps, num_drums), chunks=chunks, dtype=dtype,
                          compressors=compressors(compressor), fill_value=0)
    per_song = (SONG_CHUNK,)   # explicit: Zarr would make a string array one chunk of every song
    root.create_array("song_offsets", shape=(num_songs + 1,), chunks=per_song, dtype="int64", fill_value=0)
    root.create_array("section_offsets", shape=(num_songs + 1,), chunks=per_song, dtype="int64", fill_value=0)
    root.create_array("sections", shape=(num_sections, 2), chunks=(SONG_CHUNK, 2), dtype="int64", fill_value=0)
    songs = root.create_group("songs")
    for f in STR_FIELDS:
        songs.create_array(f, shape=(num_songs,), chunks=per_song, dtype=str)
    for f in INT_FIELDS:
        songs.create_array(f, shape=(num_songs,), chunks=per_song, dtype="int32", fill_value=0)
    for f in FLOAT_FIELDS:
        songs.create_array(f, shape=(num_songs,), chunks=per_song, dtype="float32", fill_value=0.0)
    return root


class MetadataWriter:
    """Writes song_offsets, per-song metadata, sections and attributes of a store made by
    `create_store`, songs given one at a time in store order: it holds at most one chunk of songs
    (SONG_CHUNK) and a few counters, so memory does not grow with the number of songs.

        w = MetadataWriter(root); for s in songs: w.add(s); w.close(attrs)
    """

    def __init__(self, root: zarr.Group):
        self.root, self.buf = root, []
        self.songs = self.steps = self.sections = 0
        self.splits = dict.fromkeys(ALL_SPLITS, 0)

    def add(self, song: Song) -> None:
        """One song's metadata (its rows are not read: a zero-width `hits` that knows T is enough)."""
        self.buf.append(([str(getattr(song, f)) for f in STR_FIELDS],
                         [getattr(song, f) for f in INT_FIELDS + FLOAT_FIELDS],
                         song.num_steps, np.asarray(song.sections, np.int64).reshape(-1, 2)))
        if song.split in self.splits:
            self.splits[song.split] += 1
        if len(self.buf) == SONG_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        a, b, root = self.songs, self.songs + len(self.buf), self.root
        strs, nums, lengths, secs = zip(*self.buf)
        for i, f in enumerate(STR_FIELDS):
            root["songs"][f][a:b] = np.array([s[i] for s in strs], dtype=object)
        for i, f in enumerate(INT_FIELDS + FLOAT_FIELDS):
            root["songs"][f][a:b] = np.array([n[i] for n in nums], dtype=root["songs"][f].dtype)
        root["song_offsets"][a + 1:b + 1] = self.steps + np.cumsum(lengths)
        counts = np.array([len(x) for x in secs], np.int64)
        root["section_offsets"][a + 1:b + 1] = self.sections + np.cumsum(counts)
        if counts.sum():
            root["sections"][self.sections:self.sections + int(counts.sum())] = np.concatenate(secs)
        self.songs, self.steps, self.sections = b, self.steps + int(sum(lengths)), self.sections + int(counts.sum())
        self.buf = []

    def close(self, attrs: dict) -> None:
        """Write the last songs and the attributes; the store must have been made for exactly these songs."""
        self._flush()
        root = self.root
        made = (root["song_offsets"].shape[0] - 1, root["hits"].shape[0], root["sections"].shape[0])
        if (self.songs, self.steps, self.sections) != made:
            raise ValueError(f"{root.store}: metadata of {self.songs} songs, {self.steps} steps and "
                             f"{self.sections} sections for a store made for {made[0]}, {made[1]} and {made[2]}")
        root.attrs.update({"schema_version": SCHEMA_VERSION, "num_songs": self.songs,
                           "num_steps": self.steps, "splits": self.splits, **attrs})


def write_metadata(root: zarr.Group, songs: list[Song], attrs: dict) -> None:
    """Write song_offsets, per-song metadata, sections and attributes (everything but the rows)."""
    w = MetadataWriter(root)
    for s in songs:
        w.add(s)
    w.close(attrs)


def write_store(path: str | Path, songs: list[Song], attrs: dict, *, chunk_steps: int = 65536,
                compressor: str = "zstd") -> None:
    """Write songs to a new store at `path` in one sequential pass (small data and tests).

    The `build` stage writes the same layout in parallel with dask; both go through
    create_store/write_metadata so the layout has one definition.
    """
    num_drums = songs[0].hits.shape[1] if songs else len(attrs.get("drum_names", [])) or 1
    root = create_store(path, num_songs=len(songs), num_steps=sum(s.num_steps for s in songs),
                        num_drums=num_drums, chunk_steps=chunk_steps, compressor=compressor,
                        num_sections=sum(len(np.asarray(s.sections).reshape(-1, 2)) for s in songs))
    if songs:
        for name, dtype in STEP_ARRAYS.items():
            root[name][:] = np.concatenate([getattr(s, name) for s in songs]).astype(dtype)
    write_metadata(root, songs, attrs)
    root.attrs["num_hits"] = int(sum(int((s.hits > 0).sum()) for s in songs))

    write_checks(root, {name: np.array([int(np.asarray(getattr(s, name)).sum(dtype=np.int64)) for s in songs],
                                       np.int64) for name in STEP_ARRAYS})


class Store:
    """Read access to a built store. Arrays are read lazily; metadata is loaded once."""

    def __init__(self, path: str | Path):
        self.path = path if is_url(path) else Path(path)     # a local folder or an fsspec URL
        if not exists(join(self.path, "zarr.json")):
            raise FileNotFoundError(f"{self.path}: no Zarr store here (run `dvc repro build`)")
        self.root = zarr.open_group(str(self.path), mode="r")
        version = self.root.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: schema_version {version}, this code reads {SCHEMA_VERSION} "
                             f"(version 2 added `offset`); rebuild it from the inputs: `dvc repro build` "
                             f"or `python -m pipeline [data=...]`")
        self.attrs = dict(self.root.attrs)
        self.hits = self.root["hits"]
        self.velocity = self.root["velocity"]
        self.offset = self.root["offset"]
        self.song_offsets = self.root["song_offsets"][:]
        self.meta = _Fields(self.root["songs"], STR_FIELDS + INT_FIELDS + FLOAT_FIELDS)
        self.section_offsets = self.root["section_offsets"][:]
        self.sections = self.root["sections"][:]

    @property
    def num_songs(self) -> int:
        return len(self.song_offsets) - 1

    @property
    def num_drums(self) -> int:
        return int(self.hits.shape[1])

    @property
    def drum_names(self) -> list[str]:
        return list(self.attrs["drum_names"])

    def song_slice(self, i: int) -> slice:
        return slice(int(self.song_offsets[i]), int(self.song_offsets[i + 1]))

    def rows(self, name: str, i: int, start: int, length: int) -> np.ndarray:
        """Rows [start, start + length) of song i's per-step array `name` (STEP_ARRAYS), cut at the
        song's end; reads only those rows, not the whole song."""
        sl = self.song_slice(i)
        a = sl.start + int(start)
        return np.asarray(self.root[name][a:min(a + int(length), sl.stop)])

    def song(self, i: int) -> Song:
        sl = self.song_slice(i)
        kw = {f: self.meta[f][i] for f in STR_FIELDS}
        kw.update({f: int(self.meta[f][i]) for f in INT_FIELDS})
        kw.update({f: float(self.meta[f][i]) for f in FLOAT_FIELDS})
        sec = self.sections[self.section_offsets[i]:self.section_offsets[i + 1]]
        return Song(hits=self.hits[sl], velocity=self.velocity[sl], offset=self.offset[sl], sections=sec, **kw)

    @property
    def hash(self) -> str:
        """sha256 of the attributes: which store (inputs + build settings) derived data came from."""
        return attrs_hash(self.attrs)

    def songs_in_split(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.meta["split"] == split)


class _Fields(Mapping):
    """Store.meta: per-song field name -> array of every song, each read on first use. A stage that
    needs two int fields (metrics) does not hold every song's name and source as Python strings
    (~60 bytes each, the part of its memory that grew with the corpus)."""

    def __init__(self, group: zarr.Group, names: tuple[str, ...]):
        self._group, self._names, self._read = group, names, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._read:
            self._read[name] = self._group[name][:]
        return self._read[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def attrs_hash(attrs: dict) -> str:
    """sha256 of a Zarr group's attributes (sorted JSON): the identity stages use to detect stale outputs."""
    return hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()


def content_hash(path: str, block_rows: int = 1 << 20) -> str:
    """sha256 of a Zarr group's content: every array's path, dtype, shape and values (read in blocks
    of rows, so memory stays flat) and every group's attributes; chunking and compression are left
    out. Two runs that should write the same output (another scheduler, partition size, code
    version) compare equal here."""
    root = zarr.open_group(str(path), mode="r")
    h = hashlib.sha256(json.dumps(dict(root.attrs), sort_keys=True, default=str).encode())
    for name, node in sorted(root.members(max_depth=None), key=lambda kv: kv[0]):
        if isinstance(node, zarr.Group):
            h.update(f"group {name} {json.dumps(dict(node.attrs), sort_keys=True, default=str)}".encode())
            continue
        h.update(f"array {name} {node.dtype} {node.shape}".encode())
        step = max(1, block_rows // max(1, int(np.prod(node.shape[1:]))))
        for a in range(0, node.shape[0] if node.ndim else 1, step):
            h.update(np.ascontiguousarray(node[a:a + step] if node.ndim else node[()]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- integrity checks
# Per-song sums of every per-step array, recorded when the store is built and compared on reading.
#
# A Zarr chunk that is missing reads as its fill value (zeros) and a garbled one fails in the codec:
# without a check, the metrics and the export of a damaged store succeed with fewer hits than it
# holds. `checks/<array>` (int64 [S], one per STEP_ARRAYS entry) holds the sum of each song's rows;
# readers compare what they read (`verify_songs`, `SongSums`) and stop with one line naming the song
# and the array. A store built before these arrays existed is read as before (no check).

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
