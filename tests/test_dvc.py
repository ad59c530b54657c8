"""`dvc repro` for real, in a fresh copy of the repository with no remote: the first run goes from the
built-in corpus to generated MIDI, a second run is a no-op, and editing a config reruns exactly the
stages that read it."""
import json
import subprocess
import sys

import pytest

from pipeline.store import Store

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_dvc_repro_builds_then_is_a_no_op(fresh_clone):
    repo, env = fresh_clone
    dvc = [sys.executable, "-m", "dvc"]
    first = _run(dvc + ["repro"], repo, env)
    for stage in ("ingest", "build", "metrics", "export", "train", "evaluate", "generate"):
        assert f"Running stage '{stage}'" in first
    store = Store(repo / "data" / "store.zarr")
    assert store.num_songs == 6 and store.attrs["num_steps"] > 0
    assert (repo / "data" / "ingest_report.json").exists()
    assert (repo / "runs" / "default" / "checkpoints" / "best.pt").exists()
    assert json.loads((repo / "data" / "eval" / "default" / "validation" / "metrics.json").read_text())
    assert any(p.suffix == ".mid" for p in (repo / "data" / "generated").iterdir())

    second = _run(dvc + ["repro"], repo, env)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    assert "up to date" in _run(dvc + ["status"], repo, env)

    # a store-layout edit reruns build only; the store keeps its songs with the new chunking
    cfg = repo / "conf" / "store" / "default.yaml"
    cfg.write_text(cfg.read_text().replace("chunk_steps: 65536", "chunk_steps: 512"))
    third = _run(dvc + ["repro", "build"], repo, env)
    assert "Running stage 'build'" in third and "Running stage 'ingest'" not in third
    assert Store(repo / "data" / "store.zarr").hits.chunks == (512, 9)
