import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GROOVE_DIR = Path(os.environ.get("HIERDRUMS_GROOVE", REPO_ROOT.parent / "shared" / "data" / "groove"))


@pytest.fixture(scope="session")
def groove_dir() -> Path:
    """The Groove MIDI Dataset. Without it a contributor's run skips these tests with the reason; CI
    (CI set, and it has the data) fails instead, so a lost dataset cannot pass as skipped tests."""
    if not (GROOVE_DIR / "info.csv").exists():
        reason = f"Groove MIDI Dataset not found at {GROOVE_DIR} (set HIERDRUMS_GROOVE)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return GROOVE_DIR


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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> list[str]:
    """One tiny real dataset for every trainer-side test (store -> metrics stage -> export, built once
    per session): the overrides that point the trainer at it with a tiny model (tests/trainer_data.py).
    Tests give their own trainer.run_dir, so runs never share a folder."""
    from tests.trainer_data import build_tiny_ready

    return build_tiny_ready(tmp_path_factory.mktemp("tiny_ready"))
