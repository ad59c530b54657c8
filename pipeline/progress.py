"""A heartbeat for long stages: no stage is silent for more than `every_s` seconds.

`with heartbeat("ingest"):` prints `ingest: 12/17 tasks done, 20 s` (or `ingest: working, 20 s` when
the stage runs no dask graph) every `every_s` seconds on stderr until the block ends. Dask's local
schedulers report tasks through `dask.callbacks.Callback`, so the stages need no change.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from dask.callbacks import Callback


class _TaskCount(Callback):
    def __init__(self):
        super().__init__()
        self.total = self.done = 0

    def _start_state(self, dsk, state):
        self.total += len(state["ready"]) + len(state["waiting"]) + len(state["running"])

    def _posttask(self, key, result, dsk, state, worker_id):
        self.done += 1


def progress_text(stage: str, elapsed: float, done: int, total: int) -> str:
    work = f"{done}/{total} tasks done" if total else "working"
    return f"{stage}: {work}, {elapsed:.0f} s"


@contextmanager
def heartbeat(stage: str, every_s: float = 10.0, stream=None):
    count, stop, t0 = _TaskCount(), threading.Event(), time.monotonic()

    def beat():
        while not stop.wait(every_s):
            print(progress_text(stage, time.monotonic() - t0, count.done, count.total),
                  file=stream or sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage}", daemon=True)
    with count:
        thread.start()
        try:
            yield count
        finally:
            stop.set()
            thread.join()
