"""Optimizer and learning-rate schedule from config (`trainer.optimizer`, `trainer.scheduler`).

optimizer: {type: <any torch.optim class>, config: {kwargs}}
scheduler: {enabled, type, config}, stepped once per optimizer step:
  cosine    lr(s) = lr · s/w for s < w, then lr · (r + (1 − r)·½(1 + cos(π·(s − w)/(S − w))))
            with w = warmup_steps, S = total steps, r = min_lr_ratio
  inverse   lr(s) = lr · min(1, s/w) · (1 + s/inv_gamma)^(−power)      (k-diffusion's InverseLR)
  constant  lr(s) = lr · min(1, s/w)
  any other name: a torch.optim.lr_scheduler class, built with `config` as kwargs.
"""
from __future__ import annotations

import inspect
import math

import torch
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError

SCHEDULES = ("cosine", "inverse", "constant")


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def optimizer_class(name: str) -> type:
    cls = getattr(torch.optim, str(name), None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        known = sorted(n for n, c in vars(torch.optim).items()
                       if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer")
        raise ConfigError(f"trainer.optimizer.type={name!r} is not a torch.optim optimizer; one of {known}")
    return cls


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.type)
    kwargs = _plain(cfg.get("config"))
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.optimizer: {cfg.type}({kwargs}) failed: {e}") from e


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def schedule_fn(kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                inv_gamma: float = 1.0, power: float = 1.0):
    """The lr multiplier of step s for one of SCHEDULES (a closure: LambdaLR saves nothing of it)."""
    if kind == "cosine":
        def f(s: int) -> float:
            if s < warmup_steps:
                return _warmup(s, warmup_steps)
            progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "inverse":
        def f(s: int) -> float:
            return _warmup(s, warmup_steps) * (1 + s / inv_gamma) ** (-power)
    elif kind == "constant":
        def f(s: int) -> float:
            return _warmup(s, warmup_steps)
    else:
        raise ConfigError(f"unknown schedule {kind!r}")
    return f


def build_scheduler(optimizer, cfg, total_steps: int):
    """A scheduler stepped once per optimizer step, or None when `enabled: false`."""
    if not cfg.get("enabled", True):
        return None
    kwargs = _plain(cfg.get("config"))
    if cfg.type in SCHEDULES:
        allowed = set(inspect.signature(schedule_fn).parameters) - {"kind", "total_steps"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ConfigError(f"trainer.scheduler.config: {sorted(unknown)} not understood by "
                              f"{cfg.type!r} (allowed: {sorted(allowed)})")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg.type, total_steps, **kwargs))
    cls = getattr(torch.optim.lr_scheduler, str(cfg.type), None)
    if not inspect.isclass(cls):
        raise ConfigError(f"trainer.scheduler.type={cfg.type!r}: use one of {list(SCHEDULES)} "
                          "or a torch.optim.lr_scheduler class")
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer.scheduler: {cfg.type}({kwargs}) failed: {e}") from e


def check_resume_optimizer(saved_cfg: dict, now_cfg: dict, path) -> None:
    """Refuse to resume a checkpoint with another `trainer.optimizer.type`: its saved state (and
    param-group settings, which load_state_dict copies over the new ones) belong to the old class
    and fail mid-run (SGD reading AdamW's groups: KeyError 'momentum'). Checked before anything is
    loaded or written, so the run folder still names the optimizer its checkpoints hold."""
    old = ((saved_cfg or {}).get("trainer") or {}).get("optimizer", {}).get("type")
    new = now_cfg["trainer"]["optimizer"]["type"]
    if old is not None and str(old) != str(new):
        raise ConfigError(f"cannot resume {path} with trainer.optimizer.type={new}: its optimizer state is "
                          f"{old}'s; set trainer.optimizer.type={old}, or trainer.resume=never to start "
                          "afresh (a new optimizer needs a new run)")
