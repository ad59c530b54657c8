"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
`ruff check` ([tool.ruff] in pyproject.toml) over the repository: unused and undefined names,
loop-variable closures, mutable defaults ... fail the suite like any other test..
The rest is tests/unit/test_lint.py."""
import subprocess
import sys

from common.config import REPO_ROOT


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
