"""Write-then-rename helpers, so a crash never leaves a half-written file or directory in place."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _tmp_sibling(path: Path) -> Path:
    # Same directory as the target, so the final rename never crosses a file system.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def is_url(path) -> bool:
    """An fsspec URL (s3://bucket/store.zarr, gs://…, memory://…) rather than a local path."""
    return "://" in str(path)


def join(base, *names: str):
    """`base / names` for a local path (a Path) or a URL (a str)."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def exists(path) -> bool:
    if is_url(path):
        import fsspec
        fs, root = fsspec.core.url_to_fs(str(path))
        return fs.exists(root)
    return Path(path).exists()


@contextlib.contextmanager
def atomic_url(url: str) -> Iterator[str]:
    """atomic_path for object storage, which has no rename: the output is written under a temporary
    sibling prefix, and only once complete copied onto `url` (any old output there removed first)
    and the temporary deleted. A failure before that leaves `url` untouched."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    parent, name = root.rstrip("/").rsplit("/", 1)
    tmp_root = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield fs.unstrip_protocol(tmp_root)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        for f in fs.find(tmp_root):      # file by file: object stores have no directory keys to copy
            fs.copy(f, root + f[len(tmp_root):])
    finally:
        if fs.exists(tmp_root):
            fs.rm(tmp_root, recursive=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto `path` (file or directory).

    On an exception the temporary is removed and any existing `path` is left untouched.
    An fsspec URL (`s3://…`) goes through `atomic_url` and yields a URL string.
    """
    if is_url(path):
        with atomic_url(str(path)) as tmp:
            yield tmp
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if path.is_dir() and not path.is_symlink():
            # A directory cannot be replaced in one rename: move the old one aside first.
            old = _tmp_sibling(path)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
