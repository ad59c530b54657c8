"""What every input source shares: the error types, the song invariants, the folder scan and the
`Source` interface a source module implements (pipeline/sources/__init__.py registers them)."""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.drums import DrumMap
from pipeline.store import Song


class BadInput(ValueError):
    """One input file that cannot become a song (message: '<file>: <reason>')."""


class IngestError(RuntimeError):
    """The stage cannot go on: on_error=fail met a bad file, or no usable file at all."""


class Source:
    """One input format. A subclass per module of pipeline/sources/, registered by name in SOURCES.

    `Source(cfg, drum_map)` reads and checks its options once (a bad option is an IngestError);
    `items()` lists what to read; `load(item)` turns one item into (Song, notes_mapped, unmapped
    pitch counts), raising BadInput for a bad one. Ingest's tasks call `load` wherever they run, so
    an instance holds plain, picklable values. The module's `read_file(path, ...)` reads one file
    into its roll (what `load` and generate's prime reader call). `where` names the input.
    """

    name = ""
    suffixes: tuple[str, ...] = ()     # file names this source reads from an input folder

    def __init__(self, cfg: DictConfig, drum_map: DrumMap):
        self.where = ""

    def items(self) -> Sequence:
        raise NotImplementedError

    def load(self, item) -> tuple[Song, int, dict]:
        raise NotImplementedError


def input_folder(data: DictConfig) -> Path:
    """The configured input folder (data.path), which must exist."""
    if OmegaConf.is_missing(data, "path"):
        raise IngestError(f"data.path is not set: python -m pipeline data={data.source} data.path=/your/folder")
    root = Path(data.path)
    if not root.is_dir():
        raise IngestError(f"{root}: input folder does not exist (set data.path)")
    return root


def validate_song(song: Song, where: str) -> Song:
    """Check the invariants every song in the store keeps (shape, 0/1 hits, velocity and offset only
    on hits, offsets within half a step)."""
    h = np.asarray(song.hits)
    if h.ndim != 2:
        raise BadInput(f"{where}: hits must be 2-D [time_steps, num_drums], got shape {h.shape}")
    if h.shape[0] == 0:
        raise BadInput(f"{where}: zero length (no time steps)")
    if h.shape[1] == 0:
        raise BadInput(f"{where}: no drum columns")
    hits = h > 0
    vel = np.clip(np.asarray(song.velocity), 1, 127).astype(np.uint8, copy=False)  # a new array
    np.multiply(vel, hits, out=vel)   # 0 off the hits, in place (no ~hits temporary)
    song.hits, song.velocity = hits.view(np.uint8), vel   # the view: one temporary less (bool is 1 byte)
    off = np.asarray(song.offset)
    if off.shape != h.shape or off.dtype.kind not in "iu":
        raise BadInput(f"{where}: offset must be an integer array of the shape of hits {h.shape}, "
                       f"got {off.dtype} {off.shape}")
    if len(off) and (off.min() < -64 or off.max() > 64):
        raise BadInput(f"{where}: offsets must lie in -64..64 (1/128 step, at most half a step from "
                       f"the grid), got {off.min()}..{off.max()}")
    # int8 throughout (not an int64 temporary); all zero (no timing given): a fresh zero array that
    # occupies no memory until written
    song.offset = (np.where(hits, off.astype(np.int8, copy=False), np.int8(0)) if off.any()
                   else np.zeros(h.shape, np.int8))
    sec = np.asarray(song.sections, np.int64).reshape(-1, 2)
    if len(sec) and (sec[:, 0].min() < 0 or sec[:, 1].max() > h.shape[0] or (sec[:, 1] <= sec[:, 0]).any()):
        raise BadInput(f"{where}: sections must be [start, end) pairs with 0 <= start < end <= {h.shape[0]}")
    song.sections = sec
    return song


def check_entry(path: Path) -> None:
    """A directory entry that looks like an input must be a readable, non-empty regular file.
    One stat call for a good file (this runs for every input file)."""
    try:
        st = os.stat(path)
    except OSError:
        if os.path.islink(path):
            raise BadInput(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise BadInput(f"{path}: not a regular file") from None
    if stat.S_ISDIR(st.st_mode):
        kind = "symbolic link to a folder (not followed)" if os.path.islink(path) else "a folder, not a file"
        raise BadInput(f"{path}: {kind}")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: not a regular file")
    if st.st_size == 0:
        raise BadInput(f"{path}: empty file")


def scan_folder(root: Path, suffixes: set[str]) -> list[str]:
    """Every entry under `root` whose name ends in one of `suffixes`, plus every symlinked folder,
    as posix paths relative to `root`, sorted. Symlinked folders are reported, not followed (loops,
    files outside the input); load() refuses what is not a regular file, so each such entry appears
    in the report. Plain strings: pathlib objects cost more than parsing a Groove file does."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames:
            if os.path.splitext(name)[1].lower() in suffixes:
                found.append(prefix + name)
        for name in dirnames:
            if os.path.splitext(name)[1].lower() in suffixes or os.path.islink(os.path.join(dirpath, name)):
                found.append(prefix + name)
    return sorted(found)


def song_id(rel: str) -> str:
    """A song's id: its path relative to the input folder, without the suffix."""
    return rel.rsplit(".", 1)[0]
