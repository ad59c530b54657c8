"""Progress for long work: no stage or training run is silent for more than a few seconds.

`with heartbeat("ingest"):` prints `ingest: 12/17 tasks done, 20 s` (or `ingest: working, 20 s` when
the stage runs no dask graph) every `every_s` seconds on stderr until the block ends. Dask's local
schedulers report tasks through `dask.callbacks.Callback`, so the stages need no change.

`ProgressLine` is the trainer's line for logs (stderr not a terminal), where tqdm draws nothing: a DVC
log, `nohup`, a CI job or a pipe would otherwise see nothing until the end of the first epoch
(minutes on Groove). `ProgressLine.update` prints at most one line every `every_s` seconds:
    step 120/818  loss 0.1934  412 samples/s  ETA 3m05s
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


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class ProgressLine:
    """`enabled` False: silent (a terminal has tqdm; ranks other than 0 say nothing). The ETA is
    (steps left) / (steps per second since the first update), so it needs no warm-up guess."""

    def __init__(self, total_steps: int, enabled: bool, every_s: float = 10.0, stream=None, clock=time.monotonic):
        self.total, self.enabled, self.every_s = int(total_steps), bool(enabled), float(every_s)
        self.stream, self.clock = stream, clock
        self.first: tuple[float, int] | None = None    # (time, step) of the first update
        self.last_print = None

    def update(self, step: int, loss: float, samples_per_s: float) -> str | None:
        """The line printed now, or None."""
        if not self.enabled:
            return None
        now = self.clock()
        if self.first is None:
            self.first, self.last_print = (now, step), now
            return None
        if now - self.last_print < self.every_s:
            return None
        self.last_print = now
        t0, s0 = self.first
        rate = (step - s0) / (now - t0) if now > t0 else 0.0
        eta = format_seconds((self.total - step) / rate) if rate > 0 else "?"
        line = f"step {step}/{self.total}  loss {loss:.4f}  {samples_per_s:.0f} samples/s  ETA {eta}"
        print(line, file=self.stream or sys.stderr, flush=True)
        return line
