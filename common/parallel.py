"""Where a stage's tasks run: local threads, local processes, in this thread, or a dask.distributed
cluster given by its address. Every stage maps a module-level function over a list of partitions
through `ordered_map`, so `<stage>.scheduler=tcp://host:8786` moves any stage onto a cluster.

Results come back in input order while at most `in_flight` tasks are pending: a stage writes each
partition's output as soon as it and the ones before it are done, so the driver holds a bounded
number of partitions however large the corpus is.
"""
from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

LOCAL = ("threads", "processes", "synchronous")


def is_cluster(scheduler) -> bool:
    """True for a dask.distributed scheduler address (anything that is not a local scheduler name)."""
    return bool(scheduler) and str(scheduler) not in LOCAL


class _Inline(Executor):
    """Runs each task at submit time, in this thread (scheduler=synchronous: debugging, tests)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller by result()
            fut.set_exception(exc)
        return fut


@contextlib.contextmanager
def executor(scheduler, workers: int | None = None) -> Iterator:
    """An object with `submit(fn, *args) -> future` for the scheduler: a name in LOCAL (None ->
    threads) or a dask.distributed address (one client connection for the whole stage)."""
    if is_cluster(scheduler):
        from dask.distributed import Client
        with Client(str(scheduler)) as client:
            yield client
        return
    n = int(workers) if workers else (os.cpu_count() or 1)
    kind = str(scheduler or "threads")
    if kind == "synchronous":
        yield _Inline()
    elif kind == "processes":
        with ProcessPoolExecutor(n) as pool:
            yield pool
    else:
        with ThreadPoolExecutor(n) as pool:
            yield pool


def ordered_map(pool, fn: Callable, items: Iterable, in_flight: int) -> Iterator:
    """fn(item) for every item on `pool` (from `executor`), yielded in input order, at most
    `in_flight` submitted and not yet yielded. A failed task raises here, in order."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= max(1, in_flight):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
