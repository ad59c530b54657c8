"""dvc.yaml's code deps cover what each stage imports (issue 13, item 17): the hand-written file lists
went stale (train missed loss_weighting.py, atomic.py, config.py, drums.py); whole packages cannot,
as long as every repository package a stage imports is one of its deps. Checked by importing each
stage's module in a fresh interpreter."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import REPO_ROOT

PACKAGES = ("common", "pipeline", "kernels", "train")
LAZY = {"train": ["train.training.trainer"]}   # imported inside main(), after Hydra has parsed the command line


def _stages():
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _imported_files(module: str) -> set[str]:
    """Repository files (relative paths) of every repository module that importing `module` loads."""
    code = (f"import importlib, json, sys\nfor m in {[module, *LAZY.get(module, [])]!r}: "
            "importlib.import_module(m)\n"
            f"print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in sys.modules.items() "
            f"if n.split('.')[0] in {list(PACKAGES)!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return {str(Path(f).resolve().relative_to(REPO_ROOT)) for f in json.loads(r.stdout) if f}


def _covered(path: str, deps: set[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", list(_stages()))
def test_each_stage_depends_on_every_module_it_imports(name):
    """Deps name packages (or subpackages such as train/training, so evaluation code does not
    retrain the model), and together they cover every repository module the stage imports."""
    stage = _stages()[name]
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    deps = set(stage["deps"])
    missing = sorted(f for f in _imported_files(module) if not _covered(f, deps))
    assert not missing, f"stage {name} ({module}) imports {missing}, not among its deps"


def test_no_stage_depends_on_the_whole_root_config():
    """conf/config.yaml holds every stage's keys (ingest.workers among them): stages name theirs."""
    for name, stage in _stages().items():
        assert "conf/config.yaml" not in stage.get("deps", []), name
