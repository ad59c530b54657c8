"""Source `npz`: a folder of NPZ piano rolls (conf/data/npz.yaml), each `sequence` [time_steps,
num_drums] with optional `sections`, `velocity` and `offset`.

`read_file` reads one file's arrays (one open, sizes checked from the .npy header before anything
is decompressed); `load_npz` turns them into a validated Song. Generate's prime reader calls both.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from omegaconf import DictConfig

from pipeline.drums import DrumMap
from pipeline.sources.base import BadInput, Source, check_entry, input_folder, scan_folder, song_id, validate_song
from pipeline.store import Song

MAX_DRUMS = 128        # one class per MIDI pitch at most: more columns is not a drum roll
PER_STEP = ("velocity", "offset")   # optional members of the shape of `sequence`
_BLOCK_VALUES = 1 << 20  # values converted per block: temporaries stay small beside the array


class NpzRoll(NamedTuple):
    """One NPZ file's arrays as stored, checked for shape and type (`read_file`)."""

    sequence: np.ndarray         # [time_steps, num_drums], any numeric dtype
    sections: np.ndarray         # integer [K, 2] (or [0, 2])
    extra: dict                  # the optional `velocity` / `offset` arrays the file holds


class NpzSource(Source):
    name, suffixes = "npz", (".npz",)

    def __init__(self, cfg: DictConfig, drum_map: DrumMap):
        data = cfg.data
        self.root = input_folder(data)
        self.where = str(self.root)
        self.steps_per_bar, self.bpm = int(data.get("steps_per_bar", 16)), float(data.get("bpm", 120.0))
        self.max_steps = int(cfg.ingest.max_steps)

    def items(self) -> list[tuple[Path, str]]:
        return [(self.root / rel, rel) for rel in scan_folder(self.root, set(self.suffixes))]

    def load(self, item) -> tuple[Song, int, dict]:
        path, rel = item
        check_entry(path)
        return load_npz(path, rel, steps_per_bar=self.steps_per_bar, bpm=self.bpm, max_steps=self.max_steps), 0, {}


def member_headers(path: Path, file=None) -> dict[str, tuple[tuple, np.dtype]]:
    """name -> (shape, dtype) of every `.npy` member, read from its header only: a zip member is
    decompressed only when numpy reads it, so a 2 MB file can carry a 2 GB member (from the open
    `file` when given, so a file is opened once)."""
    out = {}
    with zipfile.ZipFile(file or path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise BadInput(f"{path}: '{name}' has .npy format version {version}, expected 1.0 or 2.0")
                shape, _, dtype = read(fh)
            out[name] = (shape, dtype)
    return out


def check_npz_members(path: Path, max_steps: int, file=None) -> dict[str, tuple[tuple, np.dtype]]:
    """Refuse an NPZ whose members, by their headers, break the limits, before any member is
    decompressed; return the headers.

    `sequence` [T, D]: numeric, 1 <= T <= max_steps, 1 <= D <= MAX_DRUMS. `velocity`, `offset`:
    integer, shape [T, D]. `sections` [K, 2] (or K * 2 values): integer, K <= T (sections are at
    least one step long). Other members are never read and not checked."""
    heads = member_headers(path, file)
    if "sequence" not in heads:
        raise BadInput(f"{path}: no 'sequence' array (has {sorted(heads)})")
    shape, dtype = heads["sequence"]
    if len(shape) != 2:
        raise BadInput(f"{path}: 'sequence' must be 2-D [time_steps, num_drums], got shape {shape}")
    if dtype.kind not in "biuf":
        raise BadInput(f"{path}: 'sequence' has non-numeric dtype {dtype}")
    if shape[0] == 0:
        raise BadInput(f"{path}: zero length (no time steps)")
    if shape[1] == 0:
        raise BadInput(f"{path}: no drum columns (shape {shape})")
    if shape[1] > MAX_DRUMS:
        raise BadInput(f"{path}: {shape[1]} drum columns, more than {MAX_DRUMS} (one per MIDI pitch)")
    if shape[0] > max_steps:
        raise BadInput(f"{path}: {shape[0]} steps, more than max_steps={max_steps} (ingest.max_steps)")
    for name in PER_STEP:
        if name in heads and (heads[name][0] != shape or heads[name][1].kind not in "iu"):
            raise BadInput(f"{path}: '{name}' must be an integer array of the shape of 'sequence' {shape}, "
                           f"got {heads[name][1]} {heads[name][0]}")
    if "sections" in heads:
        sshape, sdtype = heads["sections"]
        size = int(np.prod(sshape, dtype=np.int64))
        if sdtype.kind not in "iu" or size % 2:
            raise BadInput(f"{path}: 'sections' must be an integer [K, 2] array, got {sdtype} {sshape}")
        if size // 2 > shape[0]:
            raise BadInput(f"{path}: 'sections' holds {size // 2} sections for {shape[0]} steps "
                           "(at most one per step)")
    return heads


def _blocks(seq: np.ndarray):
    rows = max(1, _BLOCK_VALUES // seq.shape[1])
    for a in range(0, seq.shape[0], rows):
        yield a, seq[a:a + rows]


def _velocity_scale(path: Path, seq: np.ndarray) -> float:
    """127 when the values are 0-1 (fractions of full velocity), 1 when they are 0-127 velocities.

    Checked block by block in the array's own dtype (no float64 copy of the whole song)."""
    top, fraction = 0, None
    for _, b in _blocks(seq):
        if b.dtype.kind == "f" and not np.isfinite(b).all():
            raise BadInput(f"{path}: 'sequence' holds NaN or inf values")
        if b.min() < 0:
            raise BadInput(f"{path}: 'sequence' holds negative values (min {b.min():g})")
        top = max(top, b.max())
        if b.dtype.kind == "f" and fraction is None:
            odd = b[b != np.rint(b)]
            fraction = odd[0] if len(odd) else None
    if top > 127:
        raise BadInput(f"{path}: 'sequence' values up to {top:g}; expected hits/velocities in 0-1 or 0-127")
    if top > 1 and fraction is not None:
        raise BadInput(f"{path}: 'sequence' mixes values above 1 (max {top:g}: 0-127 velocities) with "
                       f"non-whole values (e.g. {fraction:g}); use 0-1 throughout or whole 0-127 velocities")
    return 127.0 if top <= 1 else 1.0


def _to_velocity(seq: np.ndarray, scale: float) -> np.ndarray:
    vel = np.empty(seq.shape, np.uint8)
    for a, b in _blocks(seq):
        vel[a:a + len(b)] = _scaled(b, scale) if b.dtype.kind == "f" or scale != 1 else b
    return vel


def _scaled(b: np.ndarray, scale: float) -> np.ndarray:
    """round(b * scale), and at least 1 where b > 0: a value under 1/254 of full velocity is still
    a hit (docs/data.md: a value > 0 is a hit), not a velocity of 0 that drops it."""
    v = np.rint(b * scale)
    v[(v == 0) & (b > 0)] = 1
    return v


def read_file(path: Path, *, max_steps: int) -> NpzRoll:
    """One NPZ file's arrays, opened once: `sequence` refused by its .npy header first (shape, dtype,
    max_steps), then read with `sections` and the optional `velocity` / `offset`, each checked for
    shape and type. No pickles (allow_pickle=False)."""
    try:
        fh = open(path, "rb")
    except OSError:         # what zipfile.is_zipfile(path) answered for a file it cannot open
        raise BadInput(f"{path}: not an NPZ file (not a zip archive)") from None
    with fh:
        if not zipfile.is_zipfile(fh):
            raise BadInput(f"{path}: not an NPZ file (not a zip archive)")
        try:
            check_npz_members(path, max_steps, fh)   # every member's header, before any is decompressed
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                seq = z["sequence"]
                sections = z["sections"] if "sections" in z.files else np.zeros((0, 2), np.int64)
                extra = {k: z[k] for k in ("velocity", "offset") if k in z.files}
        except BadInput:
            raise
        except Exception as exc:  # corrupt member, object arrays (pickle refused), ...
            raise BadInput(f"{path}: unreadable NPZ ({type(exc).__name__}: {exc})") from exc
    if np.asarray(sections).dtype.kind not in "iu" or np.asarray(sections).size % 2:
        raise BadInput(f"{path}: 'sections' must be an integer [K, 2] array")
    for k, a in extra.items():
        if a.shape != seq.shape or a.dtype.kind not in "iu":
            raise BadInput(f"{path}: '{k}' must be an integer array of the shape of 'sequence' {seq.shape}, "
                           f"got {a.dtype} {a.shape}")
    return NpzRoll(seq, sections, extra)


def load_npz(path: Path, rel: str, *, steps_per_bar: int, bpm: float, max_steps: int,
             roll: NpzRoll | None = None) -> Song:
    """An NPZ with `sequence` [time_steps, num_drums]: > 0 is a hit; values 0-1 scale to velocity
    1..127, whole values 0-127 are velocities as they are. Optional `sections` [K, 2] (start, end) steps;
    optional `velocity` (1..127 on hits, replacing the one `sequence` gives) and `offset` (int,
    1/128 step, -64..64) [time_steps, num_drums]. `roll`: the file's arrays when already read.

    Memory: the sequence in its own dtype plus two uint8 arrays of its shape; sizes are checked from
    the .npy header before the array is decompressed."""
    seq, sections, extra = roll if roll is not None else read_file(path, max_steps=max_steps)
    del roll
    if "velocity" in extra:
        bad = (seq > 0) & ((extra["velocity"] < 1) | (extra["velocity"] > 127))
        if bad.any():
            raise BadInput(f"{path}: 'velocity' must be 1..127 on every hit ({int(bad.sum())} hits are not)")
    vel = _to_velocity(seq, _velocity_scale(path, seq))
    del seq
    if "velocity" in extra:
        vel = np.where(vel > 0, extra["velocity"], 0).astype(np.uint8)
    song = Song(name=song_id(rel), hits=vel, velocity=vel, source=rel, steps_per_bar=steps_per_bar,
                beats_per_bar=max(1, steps_per_bar // 4), bpm=bpm, sections=sections,
                offset=extra.get("offset"))
    del vel, extra   # the song holds them: validate_song's outputs replace them, not add to them
    return validate_song(song, str(path))
