"""Paths that ready/manifest.json records (the store and the metrics store it was exported from).

They are written relative to the folder holding ready/ (the data directory), so a data directory
copied or moved elsewhere reads its own store, not the original's. Manifests written before held
absolute paths, which `recorded` still reads as they are.
"""
from __future__ import annotations

import os
from pathlib import Path


def to_record(path: str | os.PathLike, ready: str | os.PathLike) -> str:
    """`path` as the manifest of the export at `ready` records it: relative to ready's parent."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(Path(ready).parent))).as_posix()


def recorded(ready: str | os.PathLike, manifest: dict, key: str) -> Path:
    """The path under `key` of the manifest at `ready`: relative to ready's parent, or absolute (older)."""
    return Path(ready).parent / str(manifest.get(key, ""))
