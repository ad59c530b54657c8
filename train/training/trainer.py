"""The training loop: `fit(cfg)` reads top to bottom, nanoGPT style.

One code path from one CPU process to several GPU nodes: torchrun sets RANK/WORLD_SIZE and the
loop wraps the model in DDP (gloo on CPU, nccl on GPU). Per optimizer step:
  accumulate_grad_batches micro-batches (gradient sync only on the last: `no_sync`) →
  unscale → clip → optimizer step → scheduler step → log → (validate) → (checkpoint).
Per epoch: validate, log, checkpoint (last / every n / best k), early-stopping check.

Loss averaging over micro-batches and ranks: each micro-batch's loss is a mean over its n_ri real
(unmasked) steps; it is scaled by n_ri / mean_r(Σ_i n_ri) before backward, so the accumulated,
DDP-averaged gradient is the gradient of the mean over all real steps of the global batch, however
the padding falls across micro-batches and ranks (docs/training.md says what matches exactly).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.lock import run_dir_lock
from train.training import distributed, preemption, rewards
from train.training.checkpoint import (best_name, load_checkpoint, rank_top_k, rng_state, save_checkpoint,
                                       set_rng_state)
from train.training.distributed import Dist, all_reduce_mean
from common.progress import ProgressLine
from train.training.runlog import EpochStats, LogWindow, RunLog, check_loggers, write_run_files, write_text
from common.config import ConfigError
from train.training.optim import build_optimizer, build_scheduler, check_resume_optimizer, optimizer_class

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
MAX_RUN_NAME = 200
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")   # one folder name: no '/', '..' or hidden


# --- config checks: every bad value gets a message before any work starts ---------------------

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
    need(int(tc.seq_len) == int(cfg.window.seq_len),
         f"trainer.seq_len={tc.seq_len} differs from window.seq_len={cfg.window.seq_len}: the "
         "training windows are the windows whose metrics were precomputed; set window.seq_len")
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


def model_kwargs(cfg, num_drums: int, longest_bar: int = 0) -> tuple[dict, list[str]]:
    """(constructor kwargs of the model from cfg.model and the window, unknown model.* keys);
    `model.max_steps_per_bar: 0` becomes `longest_bar`, the data's longest bar (every meter it holds)."""
    from train.training.model import HierarchicalDrumModel

    params = set(inspect.signature(HierarchicalDrumModel.__init__).parameters) - {"self"}
    given = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs = {k: v for k, v in given.items() if k in params}
    kwargs.update(num_drums=num_drums, steps_per_bar=int(cfg.window.steps_per_bar),
                  bars_per_phrase=int(cfg.window.bars_per_phrase))
    if not kwargs.get("max_steps_per_bar"):
        kwargs["max_steps_per_bar"] = max(int(longest_bar), kwargs["steps_per_bar"])
    if kwargs.get("horizon_bars") is None:    # null: the training window's bars, all the bar level sees here
        kwargs["horizon_bars"] = int(cfg.window.seq_len) // int(cfg.window.steps_per_bar)
    return kwargs, sorted(set(given) - params)


def check_model(cfg) -> list[str]:
    """Model config problems before any data is read: unknown keys (a typo would otherwise be
    dropped silently) and values the model rejects (built on the meta device: no memory, no time)."""
    from train.training.model import HierarchicalDrumModel

    kwargs, unknown = model_kwargs(cfg, num_drums=1)
    known = sorted(inspect.signature(HierarchicalDrumModel.__init__).parameters.keys() - {"self", "num_drums"})
    problems = [f"model.{k}: unknown model key (known: {', '.join(known)})" for k in unknown]
    window_bars = int(cfg.window.seq_len) // int(cfg.window.steps_per_bar)
    if isinstance(kwargs["horizon_bars"], int) and kwargs["horizon_bars"] > window_bars:
        problems.append(f"model.horizon_bars={kwargs['horizon_bars']}: more bars than a training window of "
                        f"window.seq_len={cfg.window.seq_len} holds ({window_bars}): generation would run the "
                        "bar and phrase levels past what they were trained on (null = the window's bars, 0 = unbounded)")
    try:
        with torch.device("meta"):
            HierarchicalDrumModel(**kwargs)
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as e:
        problems.append(f"model: {e}")
    return problems


def _check_scheduler(tc) -> None:
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    build_scheduler(dummy, tc.scheduler, total_steps=10)


# --- building blocks ---------------------------------------------------------------------------

def set_threads(num_threads: int) -> None:
    """Intra-op CPU threads per process. Small recurrent models on a few shared cores run much
    faster on one thread (OpenMP workers spin-wait for busy cores); 0 keeps torch's default."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def seed_everything(seed: int, deterministic: bool, strict: bool = False) -> None:
    """Seed python, numpy and torch. `deterministic`: deterministic algorithms, warning where an
    op has none; `strict`: the same, raising there instead."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic or strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=not strict)
        torch.backends.cudnn.benchmark = False


def build_data(cfg, d: Dist):
    from train.training.data import CompleteHierarchicalDrumDataset, make_loader

    tc, w = cfg.trainer, cfg.window
    # the batch carries what a consumer reads: the rl terms' window metrics, velocity and offset
    # for expressive heads, and the fields and levels (velocity; bar, phrase, song) the config asks for
    fields = tuple(tc.get("fields", ())) + (("velocity", "offset") if cfg.model.get("expressive") else ())
    common = dict(seq_len=int(tc.seq_len), stride=int(w.stride), steps_per_bar=int(w.steps_per_bar),
                  bars_per_phrase=int(w.bars_per_phrase), metrics=rewards.window_metrics_needed(cfg.rl),
                  fields=tuple(dict.fromkeys(fields)), levels=tuple(tc.get("levels", ())),
                  conditions=condition_vocab(cfg), bpm_buckets=tuple(cfg.model.get("bpm_buckets") or ()))
    try:    # a window that differs from the export's, a metric it lacks: config errors (exit 2)
        train_ds = CompleteHierarchicalDrumDataset(cfg.paths.ready, "train", augment=bool(tc.augment),
                                                   seed=int(tc.seed), **common)
        val_ds = CompleteHierarchicalDrumDataset(cfg.paths.ready, "validation", **common)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # A private generator: creating a loader iterator must not draw from the global torch RNG,
    # or a run resumed mid-epoch would see a different random stream than an uninterrupted one.
    loader_kw = dict(num_workers=int(tc.num_workers), num_replicas=d.world_size, rank=d.rank,
                     generator=torch.Generator().manual_seed(int(tc.seed)))
    train = make_loader(train_ds, int(tc.batch_size), shuffle=True, seed=int(tc.seed), drop_last=True, **loader_kw)
    val = make_loader(val_ds, int(tc.batch_size), shuffle=False, drop_last=False, **loader_kw)
    if len(val_ds) == 0 and d.is_main:
        print(f"warning: {cfg.paths.ready} has no validation windows: best.pt, top-k and early "
              "stopping are off; use last.pt", file=sys.stderr, flush=True)
    if len(train) == 0:
        raise ConfigError(f"{cfg.paths.ready}: {len(train_ds)} training windows make no batch of "
                          f"trainer.batch_size={tc.batch_size} on {d.world_size} process(es)")
    return train_ds, train, val


def build_model(cfg, num_drums: int, longest_bar: int = 0, conditions: dict | None = None,
                timing: bool = True) -> torch.nn.Module:
    """`timing=False` (data all on the grid): the model plays every hit on the grid (expressive_timing)."""
    from train.training.model import HierarchicalDrumModel

    kwargs = model_kwargs(cfg, num_drums, longest_bar)[0]
    if conditions:     # the vocabularies, not just the names: they travel in the checkpoint
        kwargs["conditioning"] = conditions
    kwargs["expressive_timing"] = bool(timing)
    return HierarchicalDrumModel(**kwargs)

def condition_vocab(cfg) -> dict[str, list[str]] | None:
    """{condition: labels} of `model.conditioning`, from the train split's songs in the export
    (train/training/conditioning.py); None when the model is unconditioned."""
    from train.training import conditioning
    from train.training.data import SONG, resolve_ready_dir

    names = list(cfg.model.get("conditioning") or [])
    if not names:
        return None
    try:
        ready = resolve_ready_dir(cfg.paths.ready)
        labels = conditioning.read_song_labels(ready)
        train_songs = np.unique(np.load(ready / "windows_train.npy", allow_pickle=False)[:, SONG])
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.conditioning={names}: {e}") from None
    return conditioning.build_vocab(names, labels, train_songs, list(cfg.model.get("bpm_buckets") or ()))


def model_structure(model: torch.nn.Module) -> str:
    """The module tree and the parameter count per level (trainer.log_model_structure)."""
    levels = {"step": ("input", "lookback", "in_pos", "out_pos", "step_rnn", "conditions"),
              "bar": ("step_to_bar", "bar_rnn", "bar_to_step", "bar_start"),
              "phrase": ("bar_to_phrase", "phrase_rnn", "phrase_to_step", "phrase_start")}
    counts = dict.fromkeys([*levels, "heads", "other"], 0)
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        level = next((lv for lv, tops in levels.items() if top in tops), None)
        level = level or ("heads" if "head" in top or top.startswith("output") else "other")
        counts[level] += param.numel()
    total = sum(counts.values())
    lines = [str(model), f"parameters: {total:,} (" + ", ".join(
        f"{k} {v:,}" for k, v in counts.items() if v or k != "other") + ")"]
    return "\n".join(lines)


class LossForward(torch.nn.Module):
    """The model's forward and its loss as one forward: the module DDP wraps. The loss reads
    parameters the model's own forward does not (the autoregressive head's); inside DDP's
    forward they count as used, where outside it find_unused_parameters marks them unused and
    their gradient then fails ("mark a variable ready only once")."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model            # the raw model, maybe compiled

    def forward(self, batch: dict, weights: dict):
        """(total loss, {term: value}, step logits) of one batch."""
        played = {k: batch[k] for k in ("velocity", "offset") if k in batch}   # the expressive history's input
        preds = self.model(batch["step"], batch.get("bar"), batch.get("phrase"), mask=batch.get("mask"),
                           start=batch.get("start"), steps_per_bar=batch.get("steps_per_bar"),
                           cond=batch.get("cond"), **played)
        raw = getattr(self.model, "_orig_mod", self.model)        # torch.compile's wrapper holds it
        total, terms = raw.compute_loss(preds, batch, weights)
        return total, terms, preds[0]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else
            (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def real_steps(batch: dict) -> torch.Tensor:
    """Number of predicted real steps (the step loss's denominator: targets are steps 1..L−1)."""
    mask = batch.get("mask")
    step = batch["step"]
    return (mask[:, 1:].sum() if mask is not None else torch.tensor(step.shape[0] * (step.shape[1] - 1))).float()


@torch.no_grad()
def evaluate(model, loader, limit: int, weights: dict, d: Dist, autocast) -> dict:
    """Mean validation loss per term over (at most `limit` batches of) the split, all ranks pooled."""
    model.eval()
    # from the first batch every time (a `limit` cut leaves the sampler mid-epoch)
    loader.sampler.load_state_dict({**loader.sampler.state_dict(), "position": 0})
    loss_of = LossForward(model)     # the raw model: no DDP in evaluation
    sums: dict[str, float] = {}
    count = 0.0
    for i, batch in enumerate(loader):
        if 0 < limit <= i:
            break
        batch = to_device(batch, d.device)
        with autocast():
            total, terms, _ = loss_of(batch, weights)
        n = float(real_steps(batch))
        for k, v in {"loss": total, **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    keys = sorted(sums)
    vec = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
    vec = all_reduce_mean(d, vec)  # mean of sums / mean of counts = pooled mean
    model.train()
    return {k: float(vec[i] / max(vec[-1], 1e-12)) for i, k in enumerate(keys)}


def drum_info(cfg, ready: Path, is_main: bool = True) -> dict:
    """drum_names, drum_pitches, steps_per_quarter for the checkpoint, from the store's attributes."""
    from pipeline.drums import DrumMap
    from pipeline.ready_paths import recorded

    manifest_path = ready / "manifest.json"
    try:
        store_json = recorded(ready, json.loads(manifest_path.read_text()), "store") / "zarr.json"
    except (OSError, ValueError, KeyError) as e:   # ValueError: bad JSON
        raise ConfigError(f"{manifest_path}: unreadable training export manifest ({type(e).__name__}: {e}); "
                          "rerun `dvc repro export`") from None
    attrs = {}
    if store_json.is_file():   # the store may be gone (data/ready is self-contained): say so, use the config
        try:
            attrs = json.loads(store_json.read_text()).get("attributes", {})
        except (OSError, ValueError) as e:
            raise ConfigError(f"{store_json}: unreadable store metadata ({type(e).__name__}: {e})") from None
    elif is_main:
        print(f"warning: {store_json} not found: the checkpoint records the drum map of the config "
              "(drums=...)", file=sys.stderr, flush=True)
    dm = DrumMap.from_config(cfg.drums)
    return {"drum_names": list(attrs.get("drum_names", dm.names)),
            "drum_pitches": [int(p) for p in attrs.get("drum_pitches", dm.pitches)],
            "steps_per_quarter": int(attrs.get("steps_per_quarter", cfg.data.get("steps_per_quarter", 4)))}


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


# --- the loop's pieces: what one run holds, and the steps `_fit` calls in order -----------------

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


@dataclass
class Parts:
    """Everything `_fit` builds once: data, model (raw and wrapped), optimizer and friends."""
    train_loader: object
    val_loader: object
    raw_model: torch.nn.Module
    model: torch.nn.Module             # LossForward(raw_model, maybe compiled), maybe DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    shaper: object                     # rewards.RewardShaper or None
    autocast: Callable
    weights: dict                      # trainer.loss_weights
    info: dict                         # drum names/pitches and the bar lengths trained on, for the checkpoint
    plain_cfg: dict
    batches_per_epoch: int
    total_steps: int
    max_epochs: int

    @property
    def sampler(self):
        return self.train_loader.sampler

    def learned_weights(self) -> dict:   # {} unless rl.learn_weights
        return self.shaper.learned_weights() if self.shaper else {}


def setup(cfg: DictConfig, d: Dist) -> Parts:
    """Data, model, optimizer, schedule, scaler, reward shaping."""
    tc = cfg.trainer
    train_ds, train_loader, val_loader = build_data(cfg, d)
    longest = max(train_ds.bar_lengths + val_loader.dataset.bar_lengths, default=0)   # every meter of the data
    raw_model = build_model(cfg, train_ds.num_drums, longest, train_ds.conditions, train_ds.has_timing).to(d.device)
    torch.manual_seed(int(tc.seed) + d.rank)  # per-rank streams (dropout, sampling) after a shared init
    model = LossForward(torch.compile(raw_model) if tc.compile else raw_model)
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
            find_unused_parameters=bool(tc.find_unused_parameters))
    accum = int(tc.accumulate_grad_batches)
    limit = int(tc.limit_train_batches)
    batches_per_epoch = len(train_loader) if limit < 0 else min(limit, len(train_loader))
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = int(tc.max_steps) if int(tc.max_steps) > 0 else steps_per_epoch * int(tc.max_epochs)
    max_epochs = int(tc.max_epochs) if int(tc.max_epochs) > 0 else math.ceil(total_steps / steps_per_epoch)
    shaper = rewards.build(cfg.rl, cfg.window, reduce_mean=lambda x: all_reduce_mean(d, x))
    if shaper is not None:
        shaper.to(d.device)
    # rl.learn_weights: the learned reward-term weights train with the model, in their own group
    optimizer = build_optimizer([{"params": list(raw_model.parameters())},
                                 *(shaper.param_groups() if shaper else [])], tc.optimizer)
    amp_dtype = PRECISIONS[str(tc.precision)]
    return Parts(
        train_loader=train_loader, val_loader=val_loader, raw_model=raw_model, model=model,
        optimizer=optimizer, scheduler=build_scheduler(optimizer, tc.scheduler, total_steps),
        scaler=torch.amp.GradScaler(d.device.type, enabled=str(tc.precision) == "16-mixed"), shaper=shaper,
        autocast=lambda: torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
        weights=OmegaConf.to_container(tc.loss_weights, resolve=True),
        info={**drum_info(cfg, train_ds.ready, d.is_main), "bar_lengths": train_ds.bar_lengths},
        plain_cfg=OmegaConf.to_container(cfg, resolve=True), batches_per_epoch=batches_per_epoch,
        total_steps=total_steps, max_epochs=max_epochs)


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
    # keys newer than the checkpoint take the constructor's defaults, as loading it does (horizon_bars 0)
    defaults = {k: v.default for k, v in inspect.signature(type(p.raw_model).__init__).parameters.items()
                if v.default is not inspect.Parameter.empty}
    saved = {**{k: defaults[k] for k in p.raw_model.config.keys() - ck["model_config"].keys() if k in defaults},
             **ck["model_config"]}
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


def train_step(p: Parts, batches, micro: int, clip: float, d: Dist) -> tuple[dict, torch.Tensor, float]:
    """One optimizer step over `micro` micro-batches; returns (mean logs per term, grad norm, data wait s).

    Each micro-batch's loss (a mean over its real steps) is weighted by its share of the real steps
    of the whole step (all micro-batches, all ranks), so the gradient is that of the mean over every
    real step whatever the padding (module docstring). Gradients sync across ranks only on the
    last micro-batch (`no_sync` before it).
    """
    tw = time.perf_counter()
    micro_batches = [to_device(next(batches), d.device) for _ in range(micro)]   # counts come first
    wait = time.perf_counter() - tw
    n = [real_steps(b) for b in micro_batches]
    n_local = torch.stack(n).sum()
    n_mean = all_reduce_mean(d, n_local) if d.enabled else n_local   # mean over ranks of Σ_i n_ri
    step_logs: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        sync = i == micro - 1 or not d.enabled
        with (contextlib.nullcontext() if sync else p.model.no_sync()):
            with p.autocast():
                loss, terms, step_logits = p.model(batch, p.weights)
                if p.shaper is not None:
                    loss, terms = shape_rewards(p, loss, terms, step_logits, batch, step_logs)
            p.scaler.scale(loss * (n[i] / n_mean)).backward()
        for k, v in {"loss": loss, **terms}.items():   # this rank's mean over its real steps
            step_logs[k] = step_logs.get(k, 0.0) + float(v.detach()) * float(n[i] / n_local.clamp_min(1))
    if p.shaper is not None:
        p.shaper.sync_grads()   # learned reward weights sit outside DDP: average them here
    p.scaler.unscale_(p.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(p.raw_model.parameters(), clip if clip > 0 else math.inf)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    p.optimizer.zero_grad(set_to_none=True)
    if p.scheduler is not None:
        p.scheduler.step()
    return step_logs, grad_norm, wait


def shape_rewards(p: Parts, loss, terms: dict, step_logits, batch: dict, step_logs: dict):
    """Add the weighted reward loss (`rl` term) to the model's; its reward logs go into step_logs."""
    shaper = p.shaper
    rl_loss, rl_logs = (shaper.surrogate(step_logits, batch, p.raw_model) if shaper.mode == "surrogate"
                        else shaper.reinforce(p.raw_model, batch))
    step_logs.update(rl_logs)
    return loss + shaper.weight * rl_loss, {**terms, "rl": rl_loss}


def log_step(p: Parts, stats: EpochStats, window: LogWindow, runlog: RunLog, global_step: int,
             log_interval: int, grad_norm: torch.Tensor, d: Dist) -> None:
    """Every log_interval steps: the mean of each term over the steps summed since the last log
    (all ranks; fewer than log_interval after a resume), lr, perf."""
    if global_step % log_interval != 0 or window.steps == 0:
        return
    keys = sorted(window.sums)
    means = all_reduce_mean(d, torch.tensor([window.sums[k] for k in keys], dtype=torch.float64))
    scalars = {(k if k.startswith("reward/") else f"train/{k}"): float(means[j]) / window.steps
               for j, k in enumerate(keys)}
    perf = stats.perf()
    scalars.update({"lr": p.optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                    "perf/samples_per_s": perf["samples_per_s"],
                    "perf/data_wait_fraction": perf["data_wait_fraction"], **p.learned_weights()})
    runlog.scalars(scalars, global_step)
    window.reset()


def validate(p: Parts, tc, runlog: RunLog, global_step: int, d: Dist) -> dict:
    val_metrics = evaluate(p.raw_model, p.val_loader, int(tc.limit_val_batches), p.weights, d, p.autocast)
    runlog.scalars({f"val/{k}": v for k, v in val_metrics.items()}, global_step)
    return val_metrics


def end_of_epoch(p: Parts, tc, state: Progress, stats: EpochStats, val_metrics: dict, stop: bool,
                 runlog: RunLog, ckpt_dir: Path, d: Dist) -> tuple[dict, bool]:
    """Validate (when due), update best / top-k / patience, checkpoint, log the epoch row and line;
    returns (the latest val metrics, whether this epoch validated)."""
    done_epoch = state.epoch + 1  # 1-based number of the epoch just finished
    validated = done_epoch % int(tc.check_val_every_n_epoch) == 0 or stop or done_epoch == p.max_epochs
    if validated:
        val_metrics = validate(p, tc, runlog, state.global_step, d)
    train_loss = float(all_reduce_mean(d, torch.tensor(stats.loss_sum / max(stats.loss_n, 1), dtype=torch.float64)))
    val_loss = val_metrics.get(str(tc.monitor).removeprefix("val/"), math.nan) if validated else math.nan
    best = state.best
    improved = math.isfinite(val_loss) and val_loss < best["loss"] - float(tc.early_stopping.min_delta)
    if improved:
        best.update(loss=val_loss, epoch=done_epoch, bad_epochs=0)
    elif validated:
        best["bad_epochs"] += 1
    names, dropped = ["last.pt"], []  # only rank 0 writes, so only its lists matter
    if int(tc.save_every_n_epochs) > 0 and done_epoch % int(tc.save_every_n_epochs) == 0:
        names.append(f"epoch_{done_epoch}.pt")
    if d.is_main and validated:
        best["top"], keep, dropped = rank_top_k(best["top"], done_epoch, val_loss, int(tc.save_top_k))
        if keep:
            names.append(best_name(done_epoch, val_loss))
    if improved:
        names.append("best.pt")
    state.epoch, state.batch_in_epoch, state.val = done_epoch, 0, val_metrics
    perf = stats.perf()
    row = {"epoch": done_epoch, "global_step": state.global_step, "train_loss": train_loss,
           "val_loss": val_loss, "lr": p.optimizer.param_groups[0]["lr"], **perf, **p.learned_weights()}
    save(p, state, ckpt_dir, names, d, val_metrics, before_commit=lambda: runlog.epoch_row(row), drop=dropped)
    if d.is_main:
        flag = " (best)" if improved else ""
        print(f"epoch {done_epoch}/{p.max_epochs}  step {state.global_step}  train {train_loss:.4f}  "
              f"val {val_loss:.4f}{flag}  {perf['samples_per_s']:.0f} samples/s  "
              f"data wait {100 * perf['data_wait_fraction']:.1f}%", flush=True)
    return val_metrics, validated


def early_stop(tc, state: Progress, d: Dist) -> bool:
    patience = int(tc.early_stopping.patience)
    if patience > 0 and state.best["bad_epochs"] >= patience:
        if d.is_main:
            print(f"early stopping: no improvement of val loss for {patience} epochs", flush=True)
        return True
    return False


# --- the loop ----------------------------------------------------------------------------------

def fit(cfg: DictConfig, on_validation: Callable[[int, dict], None] | None = None) -> dict:
    """Train as configured; returns the run summary (also written to run_dir/metrics.json).

    `on_validation(epoch, val_metrics)` is called on every rank after each epoch that validated
    (with that validation's metrics: Optuna's pruning hook); an exception from it ends the run
    cleanly (loggers closed, the tracker run marked KILLED).
    """
    validate_config(cfg)
    # rank 0 locks the run directory: a second run with the same run_name stops here, naming the holder
    first_rank = int(os.environ.get("RANK", "0")) == 0
    with run_dir_lock(cfg.trainer.run_dir) if first_rank else contextlib.nullcontext(), preemption.catch_signals():
        d = distributed.setup(int(cfg.trainer.num_gpus))
        try:
            return _fit(cfg, d, on_validation)
        finally:
            distributed.cleanup(d)


def _fit(cfg: DictConfig, d: Dist, on_validation) -> dict:
    tc = cfg.trainer
    set_threads(int(tc.num_threads))
    seed_everything(int(tc.seed), bool(tc.deterministic), bool(tc.strict_deterministic))
    ckpt_dir = Path(tc.checkpoint_dir)
    p = setup(cfg, d)
    if d.is_main and tc.log_model_structure:
        print(model_structure(p.raw_model), flush=True)

    # resume (model, optimizer, ..., sampler position and RNG), else start fresh
    resume_path = resolve_resume(str(tc.resume), ckpt_dir)
    state = restore(p, resume_path, d) if resume_path is not None else Progress()
    if state.global_step >= p.total_steps or state.epoch >= p.max_epochs:
        return finished_run(cfg, p, state, resume_path, d)
    if d.is_main:
        write_run_files(cfg, ckpt_dir)
    with RunLog(cfg, d.is_main, resumed_epoch=state.epoch, run_ids=state.trackers,
                extra_fields=list(p.learned_weights())) as runlog:
        state.trackers = runlog.run_ids()
        summary = train_loop(p, tc, state, runlog, ckpt_dir, d, on_validation)
        runlog.summary(summary)
    return summary


def summarize(p: Parts, state: Progress, stats: EpochStats, ckpt_dir: Path, d: Dist) -> dict:
    return {"best_val_loss": state.best["loss"], "best_epoch": state.best["epoch"],
            "val_loss": state.val.get("loss"), "val": state.val, "epochs": state.epoch,
            "global_step": state.global_step, **stats.perf(), "world_size": d.world_size,
            "checkpoint_dir": str(ckpt_dir), **p.learned_weights()}


def finished_run(cfg, p: Parts, state: Progress, resume_path: Path, d: Dist) -> dict:
    """Resuming a run that already reached its horizon trains nothing and keeps its metrics.json
    (written anew from the checkpoint only when missing, e.g. after a kill just before it)."""
    tc = cfg.trainer
    path = Path(tc.run_dir) / "metrics.json"
    if d.is_main:
        print(f"nothing to train: {resume_path} is at epoch {state.epoch}, step {state.global_step}, the "
              f"end of this run (trainer.max_epochs={tc.max_epochs}, trainer.max_steps={tc.max_steps}); "
              "raise them to train on, or set trainer.resume=never", flush=True)
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    summary = summarize(p, state, EpochStats(), Path(tc.checkpoint_dir), d)
    if d.is_main:
        write_text(path, json.dumps(summary, indent=1))
    return summary


def train_loop(p: Parts, tc, state: Progress, runlog: RunLog, ckpt_dir: Path, d: Dist, on_validation) -> dict:
    profiler = _profiler(tc) if tc.profile and d.is_main else contextlib.nullcontext()
    accum, samples_per_step = int(tc.accumulate_grad_batches), int(tc.batch_size) * d.world_size
    stats, window = EpochStats(), LogWindow()
    stop = state.global_step >= p.total_steps
    from tqdm.auto import tqdm

    # no terminal (a log): one line every 10 s instead of the bar
    line = ProgressLine(p.total_steps, d.is_main and not sys.stderr.isatty())
    with profiler as prof:
        while state.epoch < p.max_epochs and not stop:
            p.sampler.set_epoch(state.epoch)
            p.model.train()
            batches = iter(p.train_loader)
            bar = tqdm(total=p.batches_per_epoch, initial=state.batch_in_epoch,
                       desc=f"epoch {state.epoch + 1}/{p.max_epochs}", dynamic_ncols=True, leave=False,
                       # only on rank 0, and only on a terminal (a DVC log gets the epoch lines)
                       disable=not (d.is_main and tc.progress_bar and sys.stderr.isatty()))
            stats = EpochStats()
            while state.batch_in_epoch < p.batches_per_epoch and not stop:
                if signum := preemption.requested(d):   # SIGTERM/SIGINT: save here, at a step boundary
                    preemption.stop(signum, lambda: save(p, state, ckpt_dir, ["last.pt"], d, state.val),
                                    state.global_step, ckpt_dir / "last.pt", d.is_main)
                # one optimizer step over `micro` micro-batches (fewer at the epoch's end)
                micro = min(accum, p.batches_per_epoch - state.batch_in_epoch)
                t0 = time.perf_counter()
                step_logs, grad_norm, wait = train_step(p, batches, micro, float(tc.gradient_clip_val), d)
                state.global_step += 1
                state.batch_in_epoch += micro
                if prof is not None:
                    prof.step()
                stats.add(step_logs, wait, time.perf_counter() - t0, micro * samples_per_step)
                window.add(step_logs)

                bar.update(micro)
                bar.set_postfix(loss=f"{step_logs['loss']:.4f}", lr=f"{p.optimizer.param_groups[0]['lr']:.2e}",
                                sps=f"{stats.perf()['samples_per_s']:.0f}")
                line.update(state.global_step, step_logs["loss"], stats.perf()["samples_per_s"])
                log_step(p, stats, window, runlog, state.global_step, int(tc.log_interval), grad_norm, d)
                if not math.isfinite(step_logs["loss"]):
                    raise FloatingPointError(f"loss is {step_logs['loss']} at step {state.global_step}; lower "
                                             "trainer.optimizer.config.lr or set trainer.gradient_clip_val")
                if int(tc.val_every_n_steps) > 0 and state.global_step % int(tc.val_every_n_steps) == 0:
                    state.val = validate(p, tc, runlog, state.global_step, d)
                stop = state.global_step >= p.total_steps
                # mid-epoch checkpoint, unless the end of the epoch (or run) is about to write one
                if int(tc.save_every_n_steps) > 0 and state.global_step % int(tc.save_every_n_steps) == 0 \
                        and state.batch_in_epoch < p.batches_per_epoch and not stop:
                    save(p, state, ckpt_dir, ["last.pt"], d, state.val)
            bar.close()

            val_metrics, validated = end_of_epoch(p, tc, state, stats, state.val, stop, runlog, ckpt_dir, d)
            if on_validation is not None and validated:   # fresh metrics only: Optuna prunes on them
                on_validation(state.epoch, val_metrics)
            if early_stop(tc, state, d):
                stop = True
    return summarize(p, state, stats, ckpt_dir, d)


def _profiler(tc):
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    out = Path(tc.profiler_dir) if tc.profiler_dir else Path(tc.run_dir) / "profile"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(out)))
