"""Where a training step's time goes: forward and backward of the Groove recipe's model, part by part.

    python benchmarks/train_step.py [--repeats 15] [--warmup 2]

Starts from a bare step-level network (the recipe's width, layers, dropout and autoregressive step
head; no bar/phrase levels, no expressive heads, no conditioning, no context or lookback or
bar-in-phrase inputs) and adds one part at a time up to `groove_cpu`'s model, then conditioning,
the context input and `groove_full`'s model; two rows swap in the independent head to show the
head's share. Each row times the trainer's loss forward (`LossForward`: the model's forward and
`compute_loss` with `trainer.loss_weights`, the expressive terms included when the heads are on)
and its backward separately, on one synthetic batch of the recipe's shape (32 windows of 256
steps, 9 drums, bars of 16 steps starting on bar lines, ~1.2 hits a step, velocities and offsets
on the hits), in training mode, with one intra-op thread (the recipe's `trainer.num_threads`).

The rows run round-robin (each row once per round), so a change of the shared machine's load
falls on every row alike. Per row: CPU seconds (time.process_time) of forward and of backward, samples/s over the wall time
of forward + backward (the optimizer step is left out), each the median of `--repeats` after
`--warmup` untimed steps; `x_bare` is the row's forward + backward CPU time over the bare row's.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

B, L, D, SPB = 32, 256, 9, 16
# per-drum hit probability of a step (kick, snare, closed hat, open hat, toms x3, crash, ride):
# 1.2 hits a step in all, hats and ride the busiest, as in Groove's kits
DENSITY = [0.20, 0.15, 0.45, 0.06, 0.03, 0.03, 0.03, 0.05, 0.20]
# Groove's top-level styles (the conditioning vocabulary's size is what matters here)
STYLES = ["afrobeat", "afrocuban", "blues", "country", "dance", "funk", "gospel", "highlife", "hiphop",
          "jazz", "latin", "middleeastern", "neworleans", "pop", "punk", "reggae", "rock", "soul"]


def synthetic_batch(seed: int = 0) -> dict:
    """A batch laid out as the trainer's loader gives it (train/training/data.py)."""
    from train.model.conditioning import bpm_labels

    g = torch.Generator().manual_seed(seed)
    hits = torch.rand(B, L, D, generator=g) < torch.tensor(DENSITY)
    velocity = torch.randint(1, 128, (B, L, D), generator=g, dtype=torch.uint8) * hits
    offset = (torch.randint(-64, 65, (B, L, D), generator=g) * hits).to(torch.int8)
    cond = torch.stack([torch.randint(0, len(STYLES) + 1, (B,), generator=g),
                        torch.randint(0, 3, (B,), generator=g),
                        torch.randint(0, len(bpm_labels([80, 100, 120, 140])) + 1, (B,), generator=g)], 1)
    return {"step": hits.float(), "mask": torch.ones(B, L, dtype=torch.bool),
            "start": torch.randint(0, 120, (B,), generator=g) * SPB,     # windows start on bar lines
            "steps_per_bar": torch.full((B,), SPB), "velocity": velocity, "offset": offset, "cond": cond}


def experiment(name: str):
    """(ModelConfig, trainer.loss_weights) of `+experiment=name`, as the trainer builds them."""
    from omegaconf import OmegaConf

    from common.config import compose
    from train.model import ModelConfig
    from train.model.conditioning import bpm_labels

    cfg = compose([f"+experiment={name}"])
    vocab = {"style": STYLES, "beat_type": ["beat", "fill"], "bpm": bpm_labels(cfg.model.bpm_buckets)}
    names = list(cfg.model.get("conditioning") or [])
    data = {"conditioning": {n: vocab[n] for n in names}} if names else {}
    config = ModelConfig.from_hydra(cfg, D, SPB, expressive_timing=True, **data)
    return config, OmegaConf.to_container(cfg.trainer.loss_weights, resolve=True)


def ladder(recipe, full) -> list[tuple[str, object]]:
    """(row name, ModelConfig): the bare network, then one part added per row."""
    rep = dataclasses.replace
    bare = rep(recipe, hierarchy=False, expressive=False, expressive_history=False, expressive_spread=False,
               conditioning={}, context_input=False, lookback_bars=0, phrase_position=False)
    rows = [("bare step network", bare), ("bare, independent head", rep(bare, output="independent"))]
    c = rep(bare, lookback_bars=recipe.lookback_bars)
    rows.append(("+ lookback input", c))
    c = rep(c, hierarchy=True)
    rows.append(("+ bar and phrase levels", c))
    c = rep(c, phrase_position=True)
    rows.append(("+ bar-in-phrase position", c))
    c = rep(c, expressive=True)
    rows.append(("+ expressive heads (means)", c))
    c = rep(c, expressive_history=True)
    rows.append(("+ played history", c))
    c = rep(c, expressive_spread=True)
    if c.to_dict() != recipe.to_dict():
        raise SystemExit("the ladder does not end at groove_cpu's model: a part is missing from it")
    rows.append(("+ spread = groove_cpu", recipe))
    rows.append(("groove_cpu, independent head", rep(recipe, output="independent")))
    c = rep(recipe, conditioning=full.conditioning)
    rows.append(("groove_cpu + conditioning", c))
    c = rep(c, context_input=True)
    rows.append(("+ context input", c))
    rows.append(("- bar-in-phrase position = groove_full", full))
    return rows


def build(config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model, its LossForward) in training mode, as the trainer runs them."""
    from train.model import HierarchicalDrumModel
    from train.training.build import LossForward

    torch.manual_seed(0)
    model = HierarchicalDrumModel(config)
    return model, LossForward(model).train()


def time_once(model, step, weights: dict, batch: dict) -> tuple[float, float, float]:
    """(forward CPU s, backward CPU s, forward + backward wall s) of one training step."""
    model.zero_grad(set_to_none=True)
    w0, c0 = time.perf_counter(), time.process_time()
    total, _, _ = step(batch, weights)
    c1 = time.process_time()
    total.backward()
    return c1 - c0, time.process_time() - c1, time.perf_counter() - w0


def time_rows(rows: list[tuple[str, object]], weights: dict, batch: dict, warmup: int, repeats: int) -> list[dict]:
    """Every row once per round, round after round: a change of the machine's load falls on all
    rows alike, not on the rows that happened to run during it."""
    built = [build(config) for _, config in rows]
    times: list[list[tuple[float, float, float]]] = [[] for _ in rows]
    for i in range(warmup + repeats):
        for (model, step), out in zip(built, times):
            t = time_once(model, step, weights, batch)
            if i >= warmup:
                out.append(t)
    med = statistics.median
    return [{"config": name, "params": sum(p.numel() for p in model.parameters()),
             "fwd_cpu_s": round(med(f for f, _, _ in ts), 4), "bwd_cpu_s": round(med(b for _, b, _ in ts), 4),
             "step_cpu_s": round(med(f + b for f, b, _ in ts), 4), "samples_per_s": round(B / med(w for _, _, w in ts), 1)}
            for (name, _), (model, _), ts in zip(rows, built, times)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    recipe, weights = experiment("groove_cpu")
    full, _ = experiment("groove_full")
    batch = synthetic_batch()
    rows = time_rows(ladder(recipe, full), weights, batch, args.warmup, args.repeats)
    bare = rows[0]["step_cpu_s"]
    for r in rows:
        r["x_bare"] = round(r["step_cpu_s"] / bare, 2)
    print(json.dumps({
        "batch": {"windows": B, "steps": L, "drums": D, "steps_per_bar": SPB,
                  "hits_per_step": round(float(batch["step"].sum() / (B * L)), 3)},
        "loss_weights": weights, "threads": torch.get_num_threads(), "warmup": args.warmup,
        "repeats": args.repeats, "torch": torch.__version__, "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
