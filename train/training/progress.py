"""One progress line every few seconds for logs (stderr not a terminal), where tqdm draws nothing.

A DVC log, `nohup`, a CI job or a pipe would otherwise see nothing until the end of the first epoch
(minutes on Groove). `ProgressLine.update` prints at most one line every `every_s` seconds:
    step 120/818  loss 0.1934  412 samples/s  ETA 3m05s
"""
from __future__ import annotations

import sys
import time


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
