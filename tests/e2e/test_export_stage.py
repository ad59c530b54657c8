"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The `export` stage under real DVC: `dvc repro -s export` writes data/ready, a second run is a no-op.
The rest is tests/unit/test_export_stage.py."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.ready_data import make_songs, write_metrics
from pipeline.drums import DrumMap
from pipeline.store import write_store
from tests.unit.test_export_stage import REPO  # noqa: F401 (fixtures and helpers shared with the unit tests)


def _dvc(cwd, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    dvc = shutil.which("dvc", path=env["PATH"])
    return subprocess.run([dvc, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_dvc_repro_export(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("common", "pipeline", "kernels", "conf"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, proj / name)
    assert _dvc(proj, "init", "--no-scm", "-q").returncode == 0
    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "h1"}
    write_store(proj / "data" / "store.zarr", make_songs([700, 100, 300]), attrs)
    # the config's window (256/16) is what the stage checks the metrics against
    write_metrics(proj / "data" / "store.zarr", proj / "data" / "metrics.zarr", seq_len=256, stride=16)
    run = _dvc(proj, "repro", "-s", "export")
    assert run.returncode == 0, run.stdout + run.stderr
    manifest = json.loads((proj / "data" / "ready" / "manifest.json").read_text())
    assert (manifest["seq_len"], manifest["stride"]) == (256, 16)
    assert manifest["windows"]["train"] == (700 - 256) // 16 + 1 + 1 + (300 - 256) // 16 + 1
    again = _dvc(proj, "repro", "-s", "export")
    assert again.returncode == 0 and "didn't change" in again.stdout, again.stdout
    # metrics computed for another window: the stage fails with a message naming the file
    write_metrics(proj / "data" / "store.zarr", proj / "data" / "metrics.zarr", seq_len=128, stride=16)
    bad = _dvc(proj, "repro", "-s", "export")
    assert bad.returncode != 0
    assert "metrics.zarr: metrics were computed with seq_len=128" in bad.stdout + bad.stderr
    assert not list((proj / "data").glob(".ready.*.tmp"))          # nothing half-written left behind


def test_window_tables_streamed_in_small_chunks_equal_one_chunk(tmp_path):
    """The export checks and splits the window tables one Zarr chunk at a time: chunks of 5 rows
    (songs crossing chunk boundaries, an empty song) give the same files as one chunk."""
    import numpy as np

    from pipeline.export import export

    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "h1"}
    songs = make_songs([700, 100, 0, 300, 520, 64], splits=["train", "test", "train", "validation", "train", "test"])
    write_store(tmp_path / "store.zarr", songs, attrs)
    out = {}
    for rows in (5, 65536):
        write_metrics(tmp_path / "store.zarr", tmp_path / f"m{rows}.zarr", seq_len=128, stride=16,
                      extra=[f"metrics.chunk_windows={rows}"])
        m = export(tmp_path / "store.zarr", tmp_path / f"m{rows}.zarr", tmp_path / f"r{rows}", seq_len=128, stride=16)
        out[rows] = {s: np.load(tmp_path / f"r{rows}" / f"windows_{s}.npy") for s in ("train", "validation", "test")}
        assert m["windows"] == {"train": 36 + 25, "validation": 11, "test": 1 + 1, "tune": 0}
    for split, table in out[65536].items():
        np.testing.assert_array_equal(out[5][split], table)
    song, start = out[5]["train"][:, 1], out[5]["train"][:, 2]
    np.testing.assert_array_equal(start[song == 4], np.arange(25) * 16)
