"""Advisory locks (fcntl.flock) so two processes never write one data directory or one run directory.

The lock file holds who has it (pid, host, command, since when), so the second process can say so.
flock locks belong to the open file: they vanish when the holder exits, even on kill -9, so a stale
lock file never blocks anyone. (flock works on local file systems and on NFS v4; not on some FUSE.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DATA_LOCK = ".hierdrums.lock"   # in paths.data_dir, held by each data stage for its whole run
RUN_LOCK = ".lock"              # in trainer.run_dir, held by the training process (rank 0)


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextlib.contextmanager
def hold(lock_path: str | os.PathLike, what: str, hint: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` or raise LockHeld at once (never wait)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(lock_path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise LockHeld(f"{what} is in use by {holder} (lock {lock_path}); wait for it to finish"
                           + (f", or {hint}" if hint else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder().encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock


class LockRefused(LockHeld):
    """The lock path is a link or not a regular file: a planted link must not make us truncate its target."""


def open_lock_file(lock_path: Path) -> int:
    """Open (creating) the lock file without following a link; refuse anything but a regular file.

    O_NOFOLLOW makes open fail on a symbolic link at the last component; fstat then checks what was
    opened (a FIFO or device would be refused here too, O_NONBLOCK so a FIFO does not hang the open).
    Only after both checks does `hold` truncate it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        if os.path.islink(lock_path):
            raise LockRefused(f"{lock_path}: lock file is a symbolic link (to {os.readlink(lock_path)}); "
                              "refusing to follow it. Remove it and rerun") from None
        raise LockRefused(f"{lock_path}: cannot open the lock file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a hard link ({st.st_nlink} names)"
        raise LockRefused(f"{lock_path}: lock file is {what}; refusing to write it. Remove it and rerun")
    return fd


def _holder() -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}: {shlex.join(sys.argv)}\n"


def data_dir_lock(cfg, stage: str):
    """The lock a data stage holds on `paths.data_dir` while it reads its inputs and writes its output."""
    return hold(Path(cfg.paths.data_dir) / DATA_LOCK, f"data directory {cfg.paths.data_dir} ({stage})",
                "use another paths.data_dir")


def report_dir_lock(out_dir: str | os.PathLike, stage: str = "evaluate"):
    """The lock an evaluate run holds on its report folder: two runs would interleave its files."""
    return hold(Path(out_dir) / RUN_LOCK, f"report folder {out_dir} ({stage})",
                f"choose another {stage}.out_dir")


def run_dir_lock(run_dir: str | os.PathLike):
    return hold(Path(run_dir) / RUN_LOCK, f"run directory {run_dir}",
                "choose another trainer.run_name (or trainer.run_dir)")
