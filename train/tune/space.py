"""The search space (`tune.space`) as config overrides: what a trial's sampled values set, checked
against the composed config before any trial runs."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import optuna
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import common.config


RUN_DIR_KEY = "trainer.run_dir"  # the trainer's per-run directory (checkpoints, logs, config)


def compose(overrides: list[str]) -> DictConfig:
    """Compose the project config; inside a running Hydra app reuse its (already initialised) Hydra."""
    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name="config", overrides=list(overrides))
    return common.config.compose(list(overrides))


def override_key(override: str) -> str:
    """The key (or config group) an override string sets: `+model.x=1` -> `model.x`."""
    return OverridesParser.create().parse_override(override).key_or_group


def format_value(value: Any) -> str:
    """A Python value as Hydra override syntax (floats keep full precision; strings are quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_group(path: str) -> bool:
    """A config group (`model`, `rl`) is chosen by name (`model=lstm`); a value by `key=value`."""
    return (common.config.CONF_DIR / path.replace(".", "/")).is_dir()


def suggest(trial: optuna.Trial, name: str, spec: Mapping[str, Any]) -> Any:
    """Sample one parameter of `tune.space` with Optuna's suggest API."""
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ValueError(f"tune.space.{name}: type must be float, int or categorical, got {kind!r}")


def space_paths(spec: Mapping[str, Any]) -> list[str]:
    """`path` may be one config path or a list (one sampled value set at every path, e.g. hidden sizes)."""
    path = spec.get("path")
    paths = [path] if isinstance(path, str) else list(path or [])
    if not paths:
        raise ValueError(f"tune.space entry {dict(spec)} needs a `path` (config key or group)")
    return paths


def param_overrides(space: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Override strings that put the sampled `params` at their config paths."""
    out = []
    for name, spec in space.items():
        if name in params:
            out += [f"{p}={format_value(params[name])}" for p in space_paths(spec)]
    return out


def check_space(base: DictConfig, space: Mapping[str, Any]) -> None:
    """Fail before any trial runs if a search-space entry is malformed or its path is not in the config."""
    for name, spec in space.items():
        if spec.get("type") not in ("float", "int", "categorical"):
            raise ValueError(f"tune.space.{name}: type must be float, int or categorical, got {spec.get('type')!r}")
        need = ["choices"] if spec["type"] == "categorical" else ["low", "high"]
        if missing := [k for k in need if spec.get(k) is None]:
            raise ValueError(f"tune.space.{name}: a {spec['type']} parameter needs {missing}")
        for path in space_paths(spec):
            if not is_group(path) and OmegaConf.select(base, path, default="__missing__") == "__missing__":
                raise ValueError(f"tune.space.{name}: config path {path!r} does not exist in the composed config")
    check_objective(base, space)


def check_objective(base: DictConfig, space: Mapping[str, Any]) -> None:
    """Refuse a space the objective cannot judge: reward-shaping settings (rl.*) only pull the
    model away from the data's likelihood, so against validation metrics alone the search could
    only prefer the weakest reward. Their objective must score generated windows too."""
    rl = [name for name, spec in space.items() if any(p == "rl" or p.startswith("rl.") for p in space_paths(spec))]
    gen = base.tune.objective.get("generated") or {}
    if rl and float(gen.get("weight", 0.0) or 0.0) <= 0:
        raise ValueError(f"tune.space {rl} search reward shaping (rl.*), but the objective is validation "
                         f"{base.tune.objective.metric!r} only, which reward shaping can only worsen: set "
                         "tune.objective.generated.weight > 0 (as tune=rewards does), or drop them from tune.space")
