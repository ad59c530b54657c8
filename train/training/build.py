"""What one training run is built from: threads and seeds, data loaders, the model, and `Parts`.

`setup(cfg, d)` builds everything once (data, model raw and wrapped, optimizer, schedule, scaler,
reward shaping) into a `Parts`; `LossForward` is the module DDP wraps (the model's forward and its
loss as one forward). Kept out of trainer.py so the loop reads in one sitting.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError
from pipeline.splits import monitored_split
from train.training import rewards
from train.training.distributed import Dist, all_reduce_mean
from train.training.optim import build_optimizer, build_scheduler


PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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


def build_model(cfg, num_drums: int, longest_bar: int = 0, conditions: dict | None = None,
                timing: bool = True) -> torch.nn.Module:
    """`timing=False` (data all on the grid): the model plays every hit on the grid (expressive_timing)."""
    from train.model import HierarchicalDrumModel, ModelConfig

    # the vocabularies, not just the names: they travel in the checkpoint
    data = {"conditioning": conditions} if conditions else {}
    return HierarchicalDrumModel(ModelConfig.from_hydra(cfg, num_drums, longest_bar, expressive_timing=bool(timing),
                                                        **data))


def condition_vocab(cfg) -> dict[str, list[str]] | None:
    """{condition: labels} of `model.conditioning`, from the train split's songs in the export
    (train/model/conditioning.py); None when the model is unconditioned."""
    from train.model import conditioning
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


def build_data(cfg, d: Dist):
    from train.training.data import CompleteHierarchicalDrumDataset, make_loader

    tc, w = cfg.trainer, cfg.window
    # the batch carries what a consumer reads: the rl terms' window metrics, velocity and offset
    # for expressive heads, and the fields and levels (velocity; bar, phrase, song) the config asks for
    fields = tuple(tc.get("fields", ())) + (("velocity", "offset") if cfg.model.get("expressive") else ())
    common = dict(seq_len=int(w.seq_len), stride=int(w.stride), steps_per_bar=int(w.steps_per_bar),
                  bars_per_phrase=int(w.bars_per_phrase), metrics=rewards.window_metrics_needed(cfg.rl),
                  fields=tuple(dict.fromkeys(fields)), levels=tuple(tc.get("levels", ())),
                  conditions=condition_vocab(cfg), bpm_buckets=tuple(cfg.model.get("bpm_buckets") or ()))
    try:    # a window that differs from the export's, a metric it lacks: config errors (exit 2)
        train_ds = CompleteHierarchicalDrumDataset(cfg.paths.ready, "train", augment=bool(tc.augment),
                                                   seed=int(tc.seed), **common)
        val_ds = CompleteHierarchicalDrumDataset(cfg.paths.ready, monitored_split(cfg.paths.ready, tc.monitor_split), **common)
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
