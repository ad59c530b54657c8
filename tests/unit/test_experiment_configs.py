"""conf/experiment/: an experiment extends at most one other, and that one extends none, so what a
row of docs/results.md trains is read in at most two files."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONF_DIR, compose

EXPERIMENTS = CONF_DIR / "experiment"


def extends(path: Path) -> list[str]:
    """The experiments an experiment file's defaults list names (not `override /group: option`, `_self_`)."""
    defaults = OmegaConf.load(path).get("defaults") or []
    return [d for d in defaults if isinstance(d, str) and d != "_self_" and (path.parent / f"{d}.yaml").is_file()]


def test_an_experiment_extends_at_most_one_base_that_extends_none():
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        bases = extends(EXPERIMENTS / f"{name}.yaml")
        assert len(bases) <= 1, (name, bases)
        for base in bases:
            assert extends(EXPERIMENTS / f"{base}.yaml") == [], f"{name} extends {base}, which extends another"


def test_the_depth_check_sees_a_chain(tmp_path):
    for name, text in {"a": "x: 1\n", "b": "defaults:\n  - a\n  - _self_\n", "c": "defaults:\n  - b\n  - _self_\n"}.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    assert extends(tmp_path / "c.yaml") == ["b"] and extends(tmp_path / "b.yaml") == ["a"]   # c: three levels
    assert extends(tmp_path / "a.yaml") == []


@pytest.mark.parametrize("name, model", [("builtin_full", {"conditioning": ["style"], "context_input": True}),
                                         ("groove_full", {"conditioning": ["style", "beat_type", "bpm"],
                                                          "context_input": True, "phrase_position": False})])
def test_flattened_rows_keep_what_they_inherited(name, model):
    cfg = compose([f"+experiment={name}"])
    assert {k: OmegaConf.to_container(cfg.model, resolve=True)[k] for k in model} == model
    assert cfg.trainer.run_name == name
