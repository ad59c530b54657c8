"""Cost of the evaluation's own parts (baselines, scores, Yang-Lerch comparison) on a Groove-sized split.

Prints JSON. The model's forward pass and generation are measured by the model's benchmarks; this
measures what `train.evaluate` adds around them:
- fit seconds of each baseline on a train split of `--train-steps` steps,
- scoring throughput (predict + accumulate NLL/F1 histograms) in windows/s for each baseline,
- seconds of `compare_sets` for 14 metrics (one 9-vector) on two sets of `--set-size` windows.

    python -m benchmarks.evaluate [--train-steps 290000] [--eval-steps 52000] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from train.evaluate.baselines import make_baselines
from train.evaluate.scores import ScoreAccumulator, compare_sets

D, SPB = 9, 16


def grooves(num_steps: int, song_steps: int, seed: int) -> list[np.ndarray]:
    """Songs of a repeated random bar with 5% of the steps flipped on one drum: drum-like statistics."""
    rng = np.random.default_rng(seed)
    songs = []
    for _ in range(max(1, num_steps // song_steps)):
        bar = (rng.random((SPB, D)) < np.array([.25, .15, .5, .05, .03, .03, .03, .02, .1])).astype(np.uint8)
        roll = np.tile(bar, (song_steps // SPB, 1))
        flip = rng.random(len(roll)) < 0.05
        roll[flip, rng.integers(0, D, flip.sum())] ^= 1
        songs.append(roll)
    return songs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=290_000)
    ap.add_argument("--eval-steps", type=int, default=52_000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--set-size", type=int, default=500)
    args = ap.parse_args()
    train = grooves(args.train_steps, 320, 0)
    windows = np.stack([s[: args.seq_len] for s in grooves(args.eval_steps, args.seq_len, 1)]).astype(np.float32)
    out = {"train_steps": sum(len(s) for s in train), "windows": len(windows), "seq_len": args.seq_len,
           "machine": f"{platform.machine()} {platform.python_version()}", "baselines": {}}
    for base in make_baselines(SPB):
        t0 = time.perf_counter()
        base.fit(train)
        fit_s = time.perf_counter() - t0
        acc = ScoreAccumulator(D)
        t0 = time.perf_counter()
        for i in range(0, len(windows), 32):
            acc.update(base.predict(windows[i:i + 32]), windows[i:i + 32])
        score_s = time.perf_counter() - t0
        out["baselines"][base.name] = {"fit_s": round(fit_s, 3), "score_s": round(score_s, 3),
                                       "windows_per_s": round(len(windows) / score_s, 1),
                                       "nll_bits_per_step": round(acc.result(0.5)["nll_bits_per_step"], 4)}
    rng = np.random.default_rng(2)
    sets = [{f"m{k}": rng.normal(0, 1, (args.set_size,) + ((D,) if k == 0 else ())) for k in range(14)}
            for _ in range(2)]
    t0 = time.perf_counter()
    compare_sets(*sets, max_samples=args.set_size)
    out["compare_sets_s"] = round(time.perf_counter() - t0, 3)
    out["set_size"] = args.set_size
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
