"""Where a run stands (`Progress`), the checkpoints that hold it, and resuming from them.

Every checkpoint holds the model, optimizer, schedule, scaler, reward weights, the sampler's position
and every rank's RNG, so a resumed run continues exactly where the saved one stood; `last.pt` is the
commit point (`save`). Kept out of trainer.py so the loop reads in one sitting.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError
from train.training import distributed
from train.training.build import Parts
from train.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from train.training.distributed import Dist
from train.training.optim import check_resume_optimizer


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def new_best() -> dict:
    return {"loss": math.inf, "epoch": 0, "top": [], "bad_epochs": 0}


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint so a resumed run continues exactly here."""
    epoch: int = 0            # epochs finished
    global_step: int = 0      # optimizer steps taken
    batch_in_epoch: int = 0   # micro-batches of the current epoch consumed
    best: dict = field(default_factory=new_best)   # best monitored val loss, its epoch, top-k, patience
    val: dict = field(default_factory=dict)        # the latest validation metrics
    trackers: dict = field(default_factory=dict)   # {logger: run id}: a resume continues those tracker runs


RESUME_KEYS = ("model", "model_config", "optimizer", "scaler", "epoch", "global_step", "batch_in_epoch",
               "sampler", "rng", "best")


FRESH = "trainer.resume=never (start afresh) or trainer.resume=<a good checkpoint>"


def read_resume_checkpoint(path: Path, d: Dist) -> dict:
    """The checkpoint to resume from, or a one-line ConfigError naming the file and what to do."""
    try:
        ck = load_checkpoint(path, map_location=d.device)
    except ValueError as e:
        raise ConfigError(f"cannot resume: {e}; use {FRESH}") from None
    missing = [k for k in RESUME_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ConfigError(f"cannot resume: {path} is not a hierdrums training checkpoint (no "
                          f"{', '.join(missing)}); use {FRESH}")
    saved_by = len(ck["rng"])
    if saved_by != d.world_size:
        raise ConfigError(f"cannot resume: {path} was saved by {saved_by} process(es), this run has "
                          f"{d.world_size}; run with torchrun --nproc_per_node={saved_by} (or as many "
                          f"nodes × processes), or use {FRESH}")
    return ck


def changed_settings(saved: dict, now: dict) -> list[str]:
    """`key: old -> new` for the optimizer and schedule settings a resume does not apply (their
    state, learning rate included, comes from the checkpoint)."""
    from train.training.runlog import flatten

    out = []
    for part in ("optimizer", "scheduler"):
        old = flatten(saved.get("trainer", {}).get(part, {}) or {}, f"trainer.{part}.")
        new = flatten(now["trainer"][part], f"trainer.{part}.")
        out += [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
                for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return out


def restore(p: Parts, path: Path, d: Dist) -> Progress:
    """Load a checkpoint into the parts (model, optimizer, schedule, scaler, rewards, sampler, RNG)."""
    ck = read_resume_checkpoint(path, d)
    from train.model import upgrade

    # keys newer than the checkpoint take the values it was trained with, as loading it does
    saved = upgrade(ck["model_config"]).to_dict()
    if saved != p.raw_model.config:
        keys = sorted(k for k in saved.keys() | p.raw_model.config.keys()
                      if saved.get(k) != p.raw_model.config.get(k))
        raise ConfigError(f"{path}: model config {ck['model_config']} differs from the configured "
                          f"{p.raw_model.config} (in {', '.join(f'model.{k}' for k in keys)}); "
                          "use trainer.resume=never or match it")
    check_resume_optimizer(ck.get("config") or {}, p.plain_cfg, path)
    changed = changed_settings(ck.get("config") or {}, p.plain_cfg)
    if changed and d.is_main:
        print(f"warning: resuming {path}, whose optimizer and schedule state (learning rate included) "
              "continue unchanged; these settings differ from that run and are NOT applied (config.yaml "
              f"records the new values; {FRESH.split(' or ')[0]} applies them):\n  "
              + "\n  ".join(changed), file=sys.stderr, flush=True)
    try:
        p.raw_model.load_state_dict(ck["model"])
        p.optimizer.load_state_dict(ck["optimizer"])
        if p.scheduler is not None and ck.get("scheduler"):
            p.scheduler.load_state_dict(ck["scheduler"])
        p.scaler.load_state_dict(ck["scaler"])
        p.sampler.load_state_dict(ck["sampler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"cannot resume from {path}: {e}; use {FRESH}") from None
    if p.shaper is not None:
        p.shaper.load_state_dict(ck.get("rewards") or {})
    state = Progress(ck["epoch"], ck["global_step"], ck["batch_in_epoch"], ck["best"], ck.get("val") or {},
                     ck.get("trackers") or {})
    set_rng_state(ck["rng"][d.rank])
    if d.is_main:
        print(f"resumed from {path}: epoch {state.epoch + 1}, step {state.global_step}", flush=True)
    return state


def checkpoint_dict(p: Parts, state: Progress, rngs: list, val: dict | None) -> dict:
    return {"model": p.raw_model.state_dict(), "model_config": p.raw_model.config, "config": p.plain_cfg,
            **p.info, "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "scaler": p.scaler.state_dict(), "epoch": state.epoch, "global_step": state.global_step,
            "batch_in_epoch": state.batch_in_epoch, "sampler": p.sampler.state_dict(),
            "rng": rngs, "best": state.best, "rewards": p.shaper.state_dict() if p.shaper else {},
            "val": val or {}, "trackers": state.trackers}


def save(p: Parts, state: Progress, ckpt_dir: Path, names: list[str], d: Dist, val: dict | None = None,
         before_commit: Callable[[], None] | None = None, drop: list[str] = ()) -> None:
    """Write one checkpoint under each name (rank 0), holding every rank's RNG for exact resume.

    `last.pt` is the commit point, written last: the other files and `before_commit` (the epoch's
    metrics row) come first, and the top-k files that drop out (`drop`) are deleted only after it.
    A kill at any moment leaves a last.pt whose every file and row exists (files of the epoch being
    saved may be ahead of it; the resumed run writes them again).
    """
    rngs = distributed.all_gather_object(d, rng_state())
    distributed.barrier(d)
    if d.is_main:
        ck = checkpoint_dict(p, state, rngs, val)
        for name in [n for n in names if n != "last.pt"]:
            save_checkpoint(ckpt_dir / name, ck)
        if before_commit is not None:
            before_commit()
        save_checkpoint(ckpt_dir / "last.pt", ck)
        for name in drop:
            (ckpt_dir / name).unlink(missing_ok=True)
    distributed.barrier(d)
