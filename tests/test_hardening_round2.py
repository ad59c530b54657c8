"""Hostile cases, round two: each test fails without the fix it names (lock files that follow links,
NPZ members checked by header, many-track MIDI memory, checkpoint shapes before the model, store
chunks verified, wrapped ticks, info.csv problems, tiny NPZ values, relative export paths, stop
signals, optimizer changes on resume, one-line errors, the evaluate lock)."""
import os

import pytest

from common.lock import DATA_LOCK, LockHeld, hold


# ------------------------------------------------------------------ lock files refuse links

def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / DATA_LOCK).symlink_to(victim)
    with pytest.raises(LockHeld, match="symbolic link"):
        with hold(data / DATA_LOCK, "data directory"):
            pass
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_is_a_fifo_or_hard_link_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.lock")
    with pytest.raises(LockHeld, match="not a regular file"):
        with hold(tmp_path / "fifo.lock", "x"):
            pass
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / "hard.lock")
    with pytest.raises(LockHeld, match="hard link"):
        with hold(tmp_path / "hard.lock", "x"):
            pass
    assert victim.read_text() == "precious\n"


def test_a_regular_lock_file_still_locks(tmp_path):
    with hold(tmp_path / ".lock", "run directory"):
        assert "pid" in (tmp_path / ".lock").read_text()
