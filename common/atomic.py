"""Write-then-rename helpers, so a crash never leaves a half-written file or directory in place.

Temporaries are hidden siblings `.<name>.<pid>.<random>.tmp` (same file system, so the final rename
is atomic); one left by a killed process is removed the next time something writes `<name>`.
A directory output is replaced by exchanging it with the finished temporary in one `renameat2`
call (Linux), so at every moment the path holds either the old or the new output; and only a
directory that carries the writing stage's marker file is ever replaced (`paths.ready=data` must
not wipe `data/`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = ".hierdrums-output"   # in a stage's output directory; holds the stage's name


class OutputRefused(ValueError):
    """The output path holds something this writer must not replace."""


def _tmp_sibling(path: Path, kind: str = "tmp") -> Path:
    # The pid tells a later writer whether the temporary's owner is still alive.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")


def _owner_alive(tmp: Path) -> bool:
    # The pid is looked up on this host. Writers on other hosts sharing the folder are kept apart
    # by the data-directory lock (common.lock), under which no one else writes these outputs.
    parts = tmp.name.split(".")
    if len(parts) < 5 or not parts[-3].isdigit():
        return False          # an older name without a pid: nobody can still be writing it
    pid = int(parts[-3])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` whose writer is dead; return them.

    A dead writer's `.old` (the previous output, moved aside by the two-rename fallback swap) is put
    back when `path` itself is missing: the crash came between the two renames."""
    path = Path(path)
    pattern = glob.escape(str(path.parent / f".{path.name}.")) + "*"
    stale = [Path(p) for p in glob.glob(pattern) if p.endswith((".tmp", ".old"))]
    stale = [p for p in stale if not _owner_alive(p)]
    for p in sorted(stale, key=lambda p: not p.name.endswith(".old")):
        if p.name.endswith(".old") and not os.path.lexists(path):
            os.replace(p, path)
        else:
            _remove(p)
    return stale


def check_replaceable(path: Path, marker: str | None) -> None:
    """Refuse to replace a directory that is not this stage's own output (or any directory with a file)."""
    if path.is_symlink() or not path.is_dir():
        return
    if marker is None:
        raise OutputRefused(f"{path}: is a directory; refusing to replace it with a file")
    found = (path / MARKER).read_text().strip() if (path / MARKER).is_file() else None
    if found != marker:
        what = f"the output of stage {found!r}" if found else f"not a stage output (no {MARKER} file)"
        raise OutputRefused(f"{path}: exists and is {what}; the {marker} stage replaces only its own "
                            "output. Choose another path, or remove it yourself if it is an old output")


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
def atomic_path(path: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto `path` (file or directory).

    `marker`: the stage name a directory output carries (written into it as MARKER); an existing
    directory at `path` is replaced only when it carries the same one. On an exception the
    temporary is removed and any existing `path` is left untouched.
    An fsspec URL (`s3://…`) goes through `atomic_url` and yields a URL string.
    """
    if is_url(path):
        with atomic_url(str(path)) as tmp:
            yield tmp
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    check_replaceable(path, marker)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        elif marker is not None and tmp.is_dir():
            (tmp / MARKER).write_text(marker + "\n")
        if path.is_dir() and not path.is_symlink():
            _swap_dir(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _swap_dir(new: Path, path: Path) -> None:
    """Put directory `new` at `path`, whose old directory ends up at `new` and is then removed."""
    if not exchange(new, path):
        # No atomic exchange here: two renames; a crash between them leaves `.old`, which the next
        # writer's sweep_stale puts back.
        old = _tmp_sibling(path, "old")
        os.replace(path, old)
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(old, path)  # put the previous output back
            raise
        os.replace(old, new)
    shutil.rmtree(new, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = _libc()
    if libc is None:
        return False
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):   # ENOSYS, EINVAL, EOPNOTSUPP: kernel or file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                   ctypes.c_uint]
        return libc
    except (OSError, AttributeError):   # not glibc >= 2.28 (macOS, musl): fall back to two renames
        return None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
