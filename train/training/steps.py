"""The pieces the training loop calls in order: one optimizer step, its log line, validation, the
end of an epoch (best / top-k / patience, checkpoint, epoch row) and the early-stopping check.

Loss averaging over micro-batches and ranks is `train_step`'s (trainer.py's docstring says how).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from train.training.build import LossForward, Parts, real_steps, to_device
from train.training.checkpoint import best_name, rank_top_k
from train.training.distributed import Dist, all_reduce_mean
from train.training.resume import Progress, save
from train.training.runlog import EpochStats, LogWindow, RunLog


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
