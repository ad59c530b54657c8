"""The pipeline's heartbeat: a line every few seconds while a stage runs, with dask's task count."""
import io
import time

import dask

from common.progress import heartbeat, progress_text


def test_progress_text():
    assert progress_text("ingest", 20.4, 3, 17) == "ingest: 3/17 tasks done, 20 s"
    assert progress_text("metrics", 10, 0, 0) == "metrics: working, 10 s"


def test_heartbeat_counts_dask_tasks_and_prints_while_the_stage_runs():
    out = io.StringIO()

    def until_a_line(i):          # a task that lasts until the heartbeat has spoken (at most 30 s)
        deadline = time.monotonic() + 30
        while i == 3 and "tasks done" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        return i

    with heartbeat("build", every_s=0.01, stream=out) as count:
        total = dask.compute(*[dask.delayed(until_a_line)(i) for i in range(4)], scheduler="synchronous")
    assert sum(total) == 6 and (count.done, count.total) == (4, 4)
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("build: ") and line.endswith(" s") for line in lines)
    assert "/4 tasks done" in lines[-1]
    n = len(out.getvalue())       # the block has ended: its thread is joined, nothing more is printed
    time.sleep(0.05)
    assert len(out.getvalue()) == n
