"""dvc.yaml's code deps cover what each stage imports (issue 13, item 17): the hand-written file lists
went stale (train missed loss_weighting.py, atomic.py, config.py, drums.py); whole packages cannot,
as long as every repository package a stage imports is one of its deps. Checked by importing each
stage's module in a fresh interpreter."""
import json
import subprocess
import sys

import pytest
import yaml

from pipeline.config import REPO_ROOT

PACKAGES = ("pipeline", "kernels", "train")
LAZY = {"train": ["train.training.trainer"]}   # imported inside main(), after Hydra has parsed the command line


def _stages():
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _imported_packages(module: str) -> set[str]:
    code = (f"import importlib, json, sys\nfor m in {[module, *LAZY.get(module, [])]!r}: "
            "importlib.import_module(m)\n"
            f"print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & set({list(PACKAGES)!r}))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout))


@pytest.mark.parametrize("name", list(_stages()))
def test_each_stage_depends_on_every_package_it_imports(name):
    stage = _stages()[name]
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    deps = set(stage["deps"])
    assert not [d for d in deps if d.endswith(".py")], f"{name}: list packages, not files"
    missing = _imported_packages(module) - deps
    assert not missing, f"stage {name} ({module}) imports {sorted(missing)}, not among its deps"


def test_no_stage_depends_on_the_whole_root_config():
    """conf/config.yaml holds every stage's keys (ingest.workers among them): stages name theirs."""
    for name, stage in _stages().items():
        assert "conf/config.yaml" not in stage.get("deps", []), name
