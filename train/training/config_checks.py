"""Config checks before any work starts: every bad trainer, window or model value gets a message.

`validate_config(cfg)` gathers every problem it finds and raises one ConfigError listing them all
(`python -m train` exits 2 with that list), so a run never fails an hour in on a typo.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError
from train.training import rewards
from train.training.build import PRECISIONS
from train.training.optim import build_scheduler, optimizer_class
from train.training.runlog import check_loggers


MAX_RUN_NAME = 200
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")   # one folder name: no '/', '..' or hidden


def validate_config(cfg: DictConfig) -> None:
    tc = cfg.trainer
    problems = []

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    need(str(tc.precision) in PRECISIONS, f"trainer.precision={tc.precision!r}: one of {list(PRECISIONS)}")
    need(str(tc.strategy) in ("ddp", "auto"), f"trainer.strategy={tc.strategy!r}: 'ddp' (DataParallel is "
                                              "superseded by DDP: run several processes with torchrun)")
    need(int(tc.num_gpus) >= 0, f"trainer.num_gpus={tc.num_gpus}: must be ≥ 0 (0 = CPU)")
    need(int(tc.num_gpus) == 0 or torch.cuda.is_available(),
         f"trainer.num_gpus={tc.num_gpus} but CUDA is not available; use trainer.num_gpus=0")
    need(int(tc.num_threads) >= 0, f"trainer.num_threads={tc.num_threads}: must be ≥ 0 (0 = torch's default)")
    need(int(tc.batch_size) >= 1, f"trainer.batch_size={tc.batch_size}: must be ≥ 1")
    need(int(tc.max_epochs) >= 1 or int(tc.max_steps) >= 1,
         f"trainer.max_epochs={tc.max_epochs}, trainer.max_steps={tc.max_steps}: one must be ≥ 1")
    need(int(tc.accumulate_grad_batches) >= 1,
         f"trainer.accumulate_grad_batches={tc.accumulate_grad_batches}: must be ≥ 1")
    need(float(tc.gradient_clip_val) >= 0, f"trainer.gradient_clip_val={tc.gradient_clip_val}: must be ≥ 0")
    need(int(cfg.window.stride) % int(cfg.window.steps_per_bar) == 0,
         f"window.stride={cfg.window.stride} is not a whole number of bars of window.steps_per_bar="
         f"{cfg.window.steps_per_bar}: windows must start on bar lines, so that the model's bars and "
         "phrases are the song's")
    need(int(tc.save_top_k) >= -1, f"trainer.save_top_k={tc.save_top_k}: -1 (all), 0 (none) or k ≥ 1")
    need(int(tc.log_interval) >= 1, f"trainer.log_interval={tc.log_interval}: must be ≥ 1")
    need(len(str(tc.run_name)) <= MAX_RUN_NAME, f"trainer.run_name: {len(str(tc.run_name))} characters, at most "
         f"{MAX_RUN_NAME} (one folder name; the file system allows 255 bytes with its temporaries' suffixes)")
    need(RUN_NAME.fullmatch(str(tc.run_name)) is not None,
         f"trainer.run_name={tc.run_name!r}: letters, digits, '.', '_', '-', not starting with '.' "
         "(it names a folder under paths.runs; use trainer.run_dir for another place)")
    need(int(tc.check_val_every_n_epoch) >= 1,
         f"trainer.check_val_every_n_epoch={tc.check_val_every_n_epoch}: must be ≥ 1")
    need(int(tc.early_stopping.patience) >= 0,
         f"trainer.early_stopping.patience={tc.early_stopping.patience}: must be ≥ 0 (0 = off)")
    for key in ("limit_train_batches", "limit_val_batches"):
        need(int(tc[key]) == -1 or int(tc[key]) >= 1, f"trainer.{key}={tc[key]}: -1 (all) or ≥ 1")
    monitor = str(tc.monitor)
    need(monitor.startswith("val/") and monitor[4:] in ("loss", *(tc.loss_weights or {})),
         f"trainer.monitor={monitor!r}: 'val/loss' or 'val/<loss term>' ({list(tc.loss_weights or {})})")
    resume = str(tc.resume)
    need(resume in ("auto", "never") or Path(resume).is_file(),
         f"trainer.resume={resume!r}: 'auto', 'never' or an existing checkpoint file")
    ready = Path(cfg.paths.ready)
    need((ready / "manifest.json").is_file(),
         f"paths.ready={ready}: no training export here (run `dvc repro export`, or point "
         "paths.data_dir at a folder holding ready/)")
    for name, w in (tc.loss_weights or {}).items():
        need(float(w) >= 0, f"trainer.loss_weights.{name}={w}: must be ≥ 0")
    for check in (lambda: optimizer_class(tc.optimizer.type), lambda: _check_scheduler(tc),
                  lambda: rewards.validate(cfg.rl, cfg.window)):
        try:
            check()
        except ConfigError as e:
            problems.append(str(e))
    problems += check_model(cfg) + check_loggers(tc)
    if problems:
        raise ConfigError("bad config:\n  - " + "\n  - ".join(problems))


def check_model(cfg) -> list[str]:
    """Model config problems before any data is read: unknown keys (a typo would otherwise be
    dropped silently) and values the model rejects (built on the meta device: no memory, no time)."""
    from train.model import HierarchicalDrumModel, ModelConfig
    from train.model.config import unknown_keys

    problems = unknown_keys(OmegaConf.to_container(cfg.model, resolve=True))
    window_bars = int(cfg.window.seq_len) // int(cfg.window.steps_per_bar)
    horizon = cfg.model.get("horizon_bars")
    if isinstance(horizon, int) and horizon > window_bars:
        problems.append(f"model.horizon_bars={horizon}: more bars than a training window of "
                        f"window.seq_len={cfg.window.seq_len} holds ({window_bars}): generation would run the "
                        "bar and phrase levels past what they were trained on (null = the window's bars, 0 = unbounded)")
    try:
        config = ModelConfig.from_hydra(cfg, num_drums=1, ignore_unknown=True)
        with torch.device("meta"):
            HierarchicalDrumModel(config)
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as e:
        problems.append(f"model: {e}")
    return problems


def _check_scheduler(tc) -> None:
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    build_scheduler(dummy, tc.scheduler, total_steps=10)
