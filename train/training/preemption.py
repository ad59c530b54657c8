"""SIGTERM / SIGINT: finish the optimizer step, save a checkpoint, close the loggers, exit.

A cluster preempts a job with SIGTERM (torchrun passes it to every worker); Ctrl-C is SIGINT. The
handler only records the signal: the loop asks `requested(d)` at each step boundary, where the state
is whole, and `stop` saves `last.pt` there (the same mid-epoch checkpoint `save_every_n_steps`
writes, so resuming is bit-exact) and raises `Preempted`, which closes the loggers on its way out
(the RunLog context) and ends the CLI with 128 + the signal's number. With several processes the
ranks agree first (one all-reduce per step): a rank that saw no signal stops with the others. A
second signal while stopping is not caught again (the default action: the process ends).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


class Preempted(Exception):
    """Training stopped at a step boundary on a signal, its checkpoint saved."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.code = 128 + signum


def _record(signum, _frame) -> None:
    _received.append(signum)
    signal.signal(signum, signal.SIG_DFL)   # a second one ends the process at once


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Record SIGTERM / SIGINT while training (main thread only: elsewhere, nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _record) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()


def requested(d) -> int:
    """The signal to stop on (0 for none), the same on every rank."""
    local = _received[0] if _received else 0
    if not getattr(d, "enabled", False):
        return local
    import torch.distributed as dist

    flag = torch.tensor([float(local)], dtype=torch.float64, device=d.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def stop(signum: int, save: Callable[[], None], global_step: int, where, is_main: bool) -> None:
    """Save (every rank takes part), say so on rank 0, raise Preempted."""
    save()
    name = signal.Signals(signum).name
    message = (f"stopped by {name} at step {global_step}: checkpoint saved to {where}; run the same command "
               "again to resume (trainer.resume=auto)")
    if is_main:
        print(message, file=sys.stderr, flush=True)
    raise Preempted(signum, message)


@contextlib.contextmanager
def exit_on_preempted() -> Iterator[None]:
    """In the CLI: a Preempted run exits with 128 + the signal (143 for SIGTERM), its line already said."""
    try:
        yield
    except Preempted as e:
        raise SystemExit(e.code) from None
