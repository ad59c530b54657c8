import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GROOVE_DIR = Path(os.environ.get("HIERDRUMS_GROOVE", REPO_ROOT.parent / "shared" / "data" / "groove"))


@pytest.fixture(scope="session")
def groove_dir() -> Path:
    if not (GROOVE_DIR / "info.csv").exists():
        pytest.fail(f"Groove MIDI Dataset not found at {GROOVE_DIR} (set HIERDRUMS_GROOVE)")
    return GROOVE_DIR
