"""Size and type limits of an NPZ song, read from every member's .npy header before any data.

A zip member is decompressed only when numpy reads it, so a 2 MB file can carry a 2 GB `velocity`
or `sections` member. `check_npz_members` reads each header (shape, dtype: a few hundred bytes of
the member's stream) and refuses the file before the NPZ reader touches any array.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

MAX_DRUMS = 128          # one class per MIDI pitch at most: more columns is not a drum roll
PER_STEP = ("velocity", "offset")   # optional members of the shape of `sequence`


class NpzRefused(ValueError):
    """The NPZ is refused from its headers alone; the message names the file and the reason."""


def member_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """name -> (shape, dtype) of every `.npy` member, read from its header only."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise NpzRefused(f"{path}: '{name}' has .npy format version {version}, expected 1.0 or 2.0")
                shape, _, dtype = read(fh)
            out[name] = (shape, dtype)
    return out


def check_npz_members(path: Path, max_steps: int) -> dict[str, tuple[tuple, np.dtype]]:
    """Refuse an NPZ whose members, by their headers, break the limits; return the headers.

    `sequence` [T, D]: numeric, 1 <= T <= max_steps, 1 <= D <= MAX_DRUMS. `velocity`, `offset`:
    integer, shape [T, D]. `sections` [K, 2] (or K * 2 values): integer, K <= T (sections are at
    least one step long). Other members are never read and not checked."""
    heads = member_headers(path)
    if "sequence" not in heads:
        raise NpzRefused(f"{path}: no 'sequence' array (has {sorted(heads)})")
    shape, dtype = heads["sequence"]
    if len(shape) != 2:
        raise NpzRefused(f"{path}: 'sequence' must be 2-D [time_steps, num_drums], got shape {shape}")
    if dtype.kind not in "biuf":
        raise NpzRefused(f"{path}: 'sequence' has non-numeric dtype {dtype}")
    if shape[0] == 0:
        raise NpzRefused(f"{path}: zero length (no time steps)")
    if shape[1] == 0:
        raise NpzRefused(f"{path}: no drum columns (shape {shape})")
    if shape[1] > MAX_DRUMS:
        raise NpzRefused(f"{path}: {shape[1]} drum columns, more than {MAX_DRUMS} (one per MIDI pitch)")
    if shape[0] > max_steps:
        raise NpzRefused(f"{path}: {shape[0]} steps, more than max_steps={max_steps} (ingest.max_steps)")
    for name in PER_STEP:
        if name in heads and (heads[name][0] != shape or heads[name][1].kind not in "iu"):
            raise NpzRefused(f"{path}: '{name}' must be an integer array of the shape of 'sequence' {shape}, "
                             f"got {heads[name][1]} {heads[name][0]}")
    if "sections" in heads:
        sshape, sdtype = heads["sections"]
        size = int(np.prod(sshape, dtype=np.int64))
        if sdtype.kind not in "iu" or size % 2:
            raise NpzRefused(f"{path}: 'sections' must be an integer [K, 2] array, got {sdtype} {sshape}")
        if size // 2 > shape[0]:
            raise NpzRefused(f"{path}: 'sections' holds {size // 2} sections for {shape[0]} steps "
                             "(at most one per step)")
    return heads
