"""Writes, locks and paths: one writer per data / run directory, outputs replace
only their own kind, no stale temporaries, a swap that always leaves an output, safe run names."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.atomic import MARKER, OutputRefused, atomic_path, exchange, sweep_stale
from common.config import REPO_ROOT, compose
from common.lock import DATA_LOCK, RUN_LOCK
from common.config import ConfigError
from train.training.config_checks import validate_config

DEAD_PID = 2 ** 22 + 12345   # above Linux's pid_max (4194304): never a live process


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


# ------------------------------------------------------------------ locks

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


# ------------------------------------------------------------------ replace only own outputs

def test_a_stage_never_replaces_a_directory_that_is_not_its_output(tmp_path):
    unrelated = tmp_path / "data"
    unrelated.mkdir()
    (unrelated / "precious.txt").write_text("keep me")
    with pytest.raises(OutputRefused, match=r"not a stage output.*export stage replaces only its own"):
        with atomic_path(unrelated, marker="export") as tmp:
            tmp.mkdir()
    assert (unrelated / "precious.txt").read_text() == "keep me"
    with pytest.raises(OutputRefused, match="is a directory"):   # a file never replaces a directory
        with atomic_path(unrelated) as tmp:
            tmp.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    out = tmp_path / "ready"                 # its own output: replaced, marker carried over
    for text in ("one", "two"):
        with atomic_path(out, marker="export") as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(text)
    assert (out / "x").read_text() == "two" and (out / MARKER).read_text().strip() == "export"
    with pytest.raises(OutputRefused, match="is the output of stage 'export'"):
        with atomic_path(out, marker="build") as tmp:
            tmp.mkdir()


def test_export_cli_refuses_paths_ready_pointing_at_the_data_folder(tiny, tmp_path):
    cfg = compose(tiny)
    data = Path(cfg.paths.data_dir)
    before = sorted(p.name for p in data.iterdir())
    r = _cli("pipeline.export", *tiny, f"paths.ready={data}", f"hydra.run.dir={tmp_path / 'h'}")
    assert r.returncode == 1 and "not a stage output" in r.stderr, r.stderr
    assert sorted(p.name for p in data.iterdir() if p.name != DATA_LOCK) == before


# ------------------------------------------------------------------ temporaries and the swap

def test_stale_temporaries_are_swept_live_ones_kept(tmp_path):
    out = tmp_path / "store.zarr"
    stale = [tmp_path / f".store.zarr.{DEAD_PID}.0badf00d.tmp", tmp_path / ".store.zarr.1234abcd.tmp"]
    for p in stale:
        p.mkdir()
        (p / "chunk").write_bytes(b"\0" * 1000)
    live = tmp_path / f".store.zarr.{os.getppid()}.cafecafe.tmp"   # our parent is alive
    live.mkdir()
    other = tmp_path / f".other.{DEAD_PID}.0badf00d.tmp"          # another output's: not ours to sweep
    other.mkdir()
    with atomic_path(out, marker="build") as tmp:
        tmp.mkdir()
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists() and out.is_dir()


def test_a_crash_between_two_renames_is_repaired_by_the_next_writer(tmp_path):
    out = tmp_path / "ready"
    aside = tmp_path / f".ready.{DEAD_PID}.0badf00d.old"   # the fallback swap died after its first rename
    aside.mkdir()
    (aside / "x").write_text("old output")
    assert sweep_stale(out) == [aside]
    assert (out / "x").read_text() == "old output" and not aside.exists()


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    assert exchange(a, b)  # Linux CI: renameat2 is there
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


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


# ------------------------------------------------------------------ run names

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x y"])
def test_run_names_that_leave_runs_are_refused(tiny, name):
    with pytest.raises(ConfigError, match=r"trainer\.run_name="):
        validate_config(compose(tiny + [f"trainer.run_name='{name}'"]))


def test_run_name_cli_exits_2_and_writes_nothing(tiny, tmp_path):
    r = _cli("train", *tiny, "trainer.run_name=../../escaped", f"paths.runs={tmp_path / 'runs'}",
             f"hydra.run.dir={tmp_path / 'h'}")
    assert r.returncode == 2 and "trainer.run_name='../../escaped'" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()
