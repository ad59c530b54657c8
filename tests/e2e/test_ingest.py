"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Stage `ingest`: NPZ and MIDI folders with every kind of bad input, splits, on_error, exit codes.
The rest is tests/unit/test_ingest.py."""
import json
import subprocess
import sys


from common.config import REPO_ROOT
from tests.unit.test_ingest import _npz_folder  # noqa: F401 (fixtures and helpers shared with the unit tests)


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pipeline.ingest", *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True)


def test_cli_exit_codes(tmp_path):
    bad = _npz_folder(tmp_path / "in")
    out = tmp_path / "out"
    r = _cli(tmp_path, "data=npz", f"data.path={tmp_path / 'in'}", f"paths.data_dir={out}", "ingest.on_error=fail")
    assert r.returncode == 1
    first_bad = sorted(bad)[0]  # files are visited in sorted path order
    assert f"{first_bad}: {bad[first_bad]}" in r.stderr, r.stderr
    assert not (out / "interim").exists() and not (out / "ingest_report.json").exists()

    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("no npz here")
    r = _cli(tmp_path, "data=npz", f"data.path={empty}", f"paths.data_dir={out}")
    assert r.returncode == 1 and "no input files found" in r.stderr and str(empty) in r.stderr

    r = _cli(tmp_path, "data=npz", f"data.path={tmp_path / 'in'}", f"paths.data_dir={out}")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "ingest_report.json").read_text())["songs"] == 4
