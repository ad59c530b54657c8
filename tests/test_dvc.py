"""`dvc repro` for real, in a fresh copy of the repository with no remote: the first run goes from the
built-in corpus to generated MIDI, a second run is a no-op, and editing a config reruns exactly the
stages that read it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.store import Store

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.fixture
def fresh_clone(tmp_path):
    """The repository's files (tracked + untracked-not-ignored) in a new git repo, no DVC cache or remote."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    repo = tmp_path / "repo"
    for f in filter(None, files):
        src = REPO_ROOT / f
        if src.is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    builtin = repo / "conf" / "data" / "builtin.yaml"
    text = builtin.read_text()
    assert "num_songs: 400" in text
    builtin.write_text(text.replace("num_songs: 400", "num_songs: 6"))  # a tiny corpus for CI
    params = repo / "params.yaml"
    text = params.read_text()
    assert "trainer: default" in text
    params.write_text(text.replace("trainer: default", "trainer: tiny"))  # seconds, not minutes
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "fresh clone"], repo, env)
    assert not (repo / ".dvc" / "cache").exists()
    return repo, env


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
    assert json.loads((repo / "data" / "eval" / "metrics.json").read_text())
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
