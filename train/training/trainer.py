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

Here: `fit` → `_fit` → `train_loop`, in reading order. Their pieces: `config_checks` (every bad
value named before any work), `build` (data, model, optimizer: `Parts`), `resume` (`Progress`,
checkpoints, resuming), `steps` (one optimizer step, logging, validation, the end of an epoch).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.lock import run_dir_lock
from common.progress import ProgressLine
from train.training import distributed, preemption
from train.training.build import Parts, model_structure, seed_everything, set_threads, setup
from train.training.config_checks import validate_config
from train.training.distributed import Dist
from train.training.resume import Progress, resolve_resume, restore, save
from train.training.runlog import EpochStats, LogWindow, RunLog, write_run_files, write_text
from train.training.steps import early_stop, end_of_epoch, log_step, train_step, validate


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


def _profiler(tc):
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    out = Path(tc.profiler_dir) if tc.profiler_dir else Path(tc.run_dir) / "profile"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(out)))
