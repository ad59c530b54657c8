"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
dvc.yaml's code deps cover what each stage imports: the hand-written file lists went stale (train
missed loss_weighting.py, atomic.py, config.py, drums.py); packages, subpackages and modules
checked here cannot. Checked by importing each stage's module in a fresh interpreter, and by
following every import statement (function-level ones too) from it. And they are exact where it
matters: the train stage does not depend on the ingest, its sources or the MIDI reader..
The rest is tests/unit/test_dvc_deps.py."""
import ast
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


# Imports inside functions that no DVC stage runs, with why: following them would make a stage
# depend on code it never executes.
NOT_RUN = {("train.training.loader", "pipeline.stages"):
           "window_loader given an NPZ folder builds its export there; DVC stages read data/ready"}


def _module_file(module: str) -> Path | None:
    path = REPO_ROOT / module.replace(".", "/")
    for f in (path / "__init__.py", path.with_suffix(".py")):
        if f.exists():
            return f
    return None


def _imports(module: str) -> set[str]:
    """The repository modules (and their parent packages) that `module`'s import statements name."""
    file = _module_file(module)
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    out = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        while name and _module_file(name) is None:     # `from pkg.mod import function`: the module
            name = name.rpartition(".")[0]
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _reachable_files(module: str) -> set[str]:
    todo, seen = [module, *(m for m in [f"{module}.__main__"] if _module_file(m))], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [n for n in _imports(m) if (m, n) not in NOT_RUN]
    return {str(_module_file(m).relative_to(REPO_ROOT)) for m in seen}


@pytest.mark.parametrize("name", list(_stages()))
def test_each_stage_depends_on_every_module_it_may_run(name):
    """Every import statement, a function's too (they run when the stage calls it), followed from
    the stage's module and its __main__; only the NOT_RUN edges are left out."""
    stage = _stages()[name]
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    missing = sorted(f for f in _reachable_files(module) if not _covered(f, set(stage["deps"])))
    assert not missing, f"stage {name} ({module}) may run {missing}, not among its deps"


def test_editing_the_readers_retrains_nothing():
    """The train stage does not depend on the ingest, its sources or the MIDI reader (nor does the
    build stage, which reads the interim format only): editing the MIDI reader does not retrain."""
    readers = ["pipeline/ingest.py", "pipeline/sources/npz.py", "pipeline/sources/midi.py", "pipeline/midi.py"]
    for name in ("train", "build"):
        deps = set(_stages()[name]["deps"])
        assert not [f for f in readers if _covered(f, deps)], name
    assert _covered("pipeline/midi.py", set(_stages()["ingest"]["deps"]))
    assert not any(f.startswith(("pipeline/ingest", "pipeline/sources", "pipeline/midi"))
                   for f in _reachable_files("train"))


def test_no_stage_depends_on_the_whole_root_config():
    """conf/config.yaml holds every stage's keys (ingest.workers among them): stages name theirs."""
    for name, stage in _stages().items():
        assert "conf/config.yaml" not in stage.get("deps", []), name
