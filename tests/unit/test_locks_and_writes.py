"""Writes, locks and paths: one writer per data / run directory, outputs replace
only their own kind, no stale temporaries, a swap that always leaves an output, safe run names."""

import os

import pytest

from common.atomic import MARKER, OutputRefused, atomic_path, exchange, sweep_stale
from common.config import compose
from common.config import ConfigError
from train.training.config_checks import validate_config

DEAD_PID = 2 ** 22 + 12345   # above Linux's pid_max (4194304): never a live process

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

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x y"])
def test_run_names_that_leave_runs_are_refused(tiny, name):
    with pytest.raises(ConfigError, match=r"trainer\.run_name="):
        validate_config(compose(tiny + [f"trainer.run_name='{name}'"]))
