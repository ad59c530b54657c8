"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Writes, locks and paths: one writer per data / run directory, outputs replace.
The rest is tests/unit/test_locks_and_writes.py."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from common.config import REPO_ROOT, compose
from common.lock import DATA_LOCK, RUN_LOCK


def _holder(lock: Path, what: str):
    """A real second process holding the lock (common.lock.hold) until we kill it."""
    code = textwrap.dedent(f"""
        import sys, time
        from common.lock import hold
        with hold({str(lock)!r}, {what!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def _stop(p):
    p.send_signal(signal.SIGKILL)   # kill -9: the lock must still be released
    p.wait()


def _cli(module, *args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True)


def test_a_second_writer_of_one_data_directory_is_refused_naming_the_holder(tmp_path):
    data = tmp_path / "data"
    inp = tmp_path / "in"
    inp.mkdir()
    np.savez(inp / "a.npz", sequence=np.eye(16, 9, dtype=np.uint8) * 100)
    args = ["data=npz", f"data.path={inp}", f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'h'}"]
    holder = _holder(data / DATA_LOCK, "data directory")
    try:
        for module in ("pipeline.ingest", "pipeline"):
            r = _cli(module, *args)
            assert r.returncode == 1, r.stderr
            assert f"is in use by pid {holder.pid} on " in r.stderr and "paths.data_dir" in r.stderr, r.stderr
        assert not (data / "interim").exists()
    finally:
        _stop(holder)
    r = _cli("pipeline.ingest", *args)
    assert r.returncode == 0, r.stderr
    assert (data / "interim" / "manifest.json").exists()


def test_a_second_training_run_in_one_run_directory_is_refused(tiny, tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir / RUN_LOCK, "run directory")
    try:
        r = _cli("train", *tiny, f"trainer.run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'h'}",
                 "trainer.max_epochs=1")
        assert r.returncode == 1, r.stderr
        assert f"run directory {run_dir} is in use by pid {holder.pid}" in r.stderr, r.stderr
        assert "trainer.run_name" in r.stderr
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.csv").exists()
    finally:
        _stop(holder)


def test_export_cli_refuses_paths_ready_pointing_at_the_data_folder(tiny, tmp_path):
    cfg = compose(tiny)
    data = Path(cfg.paths.data_dir)
    before = sorted(p.name for p in data.iterdir())
    r = _cli("pipeline.export", *tiny, f"paths.ready={data}", f"hydra.run.dir={tmp_path / 'h'}")
    assert r.returncode == 1 and "not a stage output" in r.stderr, r.stderr
    assert sorted(p.name for p in data.iterdir() if p.name != DATA_LOCK) == before


def test_the_output_path_exists_at_every_moment_of_a_swap(tmp_path):
    """At every Python-level call and return during the replacement, the output is there (old or new).
    The profile hook checks it and kills the process (kill -9) the first time it is missing."""
    out = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from common.atomic import atomic_path
        out = Path({str(out)!r})
        for text in ("old", "new"):
            with atomic_path(out, marker="export") as tmp:
                tmp.mkdir()
                (tmp / "x").write_text(text)
                if text == "new":
                    def hook(frame, event, arg):
                        if not out.exists():
                            os.kill(os.getpid(), signal.SIGKILL)
                    sys.setprofile(hook)
        sys.setprofile(None)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert (out / "x").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ready"]


def test_run_name_cli_exits_2_and_writes_nothing(tiny, tmp_path):
    r = _cli("train", *tiny, "trainer.run_name=../../escaped", f"paths.runs={tmp_path / 'runs'}",
             f"hydra.run.dir={tmp_path / 'h'}")
    assert r.returncode == 2 and "trainer.run_name='../../escaped'" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()
