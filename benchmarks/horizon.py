"""Training horizon = generation horizon: does a long generation keep the real structure
over its whole length? Prints JSON.

    python -m benchmarks.horizon --checkpoint runs/horizon/checkpoints/best.pt   # built-in corpus: data/store.zarr

One trained checkpoint, generated twice from the same seeds: with the bar and phrase levels bounded
to a training window (`horizon_bars` = window bars, what new runs record) and unbounded
(`horizon_bars=0`: the levels run over everything since step 0, as before). Each sample is `--bars`
bars from silence; the scalar window metrics (kernels.window_metrics: density, syncopation,
n-gram entropy ... and the structure metrics of kernels/structure.py) of its 16-bar segments
(bars 1–16, 17–32, ...) are compared with every window (stride one bar) of the split's real songs:
for each metric, the real 5th / 50th / 95th percentiles and, per variant and segment, the generated
mean and the fraction of generated windows inside the real 5–95% range. `divergence_bits`: how far
the two variants' next-step distributions are apart on the same rolls (each variant's own samples,
teacher-forced through both), per segment: the mean KL(bounded ‖ unbounded) in bits per step of the
per-drum Bernoullis (0 in the first window, where the two are the same model).
`amortised_ms_per_step`: one row, `--bars` bars, best of `--repeats` generations per variant,
interleaved (the bounded levels re-run over their last items once per bar: O(1) amortised per step).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from kernels import window_metrics
from kernels.spec import WINDOW_SCHEMA
from pipeline.store import Store
from train.training.checkpoint import load_model
from train.model import HierarchicalDrumModel

SCALARS = [k for k, (_, shape) in WINDOW_SCHEMA.items() if shape(1, 1, 1) == ()]


def metrics(roll: np.ndarray, seq_len: int, stride: int, spb: int, bpp: int) -> dict[str, np.ndarray]:
    out = window_metrics(roll, seq_len=seq_len, stride=stride, steps_per_bar=spb, bars_per_phrase=bpp)
    return {k: np.asarray(out[k], np.float64) for k in SCALARS}


def real_metrics(store: Store, split: str, seq_len: int, spb: int, bpp: int) -> dict[str, np.ndarray]:
    """Every window (stride one bar) of the split's songs in this meter."""
    parts = [metrics(np.asarray(store.song(i).hits), seq_len, spb, spb, bpp)
             for i in store.songs_in_split(split) if int(store.meta["steps_per_bar"][i]) == spb]
    return {k: np.concatenate([p[k] for p in parts]) for k in SCALARS}


def with_horizon(model: HierarchicalDrumModel, horizon: int) -> HierarchicalDrumModel:
    m = HierarchicalDrumModel.from_config({**model.config, "horizon_bars": horizon})
    m.load_state_dict(model.state_dict())
    return m.eval()


def segments(rolls: np.ndarray, seq_len: int, spb: int, bpp: int) -> list[dict[str, np.ndarray]]:
    """Per consecutive seq_len segment of the samples: {metric: [num_samples]}."""
    per = [metrics(r, seq_len, seq_len, spb, bpp) for r in rolls]   # stride seq_len: the segments
    return [{k: np.array([p[k][s] for p in per]) for k in SCALARS} for s in range(len(per[0][SCALARS[0]]))]


@torch.no_grad()
def divergence(a: HierarchicalDrumModel, b: HierarchicalDrumModel, rolls: torch.Tensor, seq_len: int) -> list:
    """Mean per-step KL(p_a ‖ p_b) in bits over each seq_len segment, per-drum marginals."""
    pa, pb = (m.step_marginals(m(rolls)[0]).double().clamp(1e-9, 1 - 1e-9) for m in (a, b))
    kl = (pa * (pa / pb).log2() + (1 - pa) * ((1 - pa) / (1 - pb)).log2()).sum(-1)     # [B, T]
    return [round(float(kl[:, s:s + seq_len].mean()), 5) for s in range(0, kl.shape[1], seq_len)]


def amortised_ms(models: dict, steps: int, repeats: int) -> dict:
    """Best-of-`repeats` mean ms per generated step, batch 1; variants interleaved so that the
    shared machine's load hits them alike."""
    best = {name: float("inf") for name in models}
    for r in range(repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            m.generate(None, steps, seed=r)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps * 1e3)
    return {name: round(v, 4) for name, v in best.items()}


def summary(real: dict, generated: dict) -> dict:
    out = {}
    for k in SCALARS:
        lo, mid, hi = np.percentile(real[k], [5, 50, 95])
        row = {"real_p5": round(lo, 4), "real_p50": round(mid, 4), "real_p95": round(hi, 4),
               "real_mean": round(float(real[k].mean()), 4)}
        for name, segs in generated.items():
            row[name] = [{"mean": round(float(s[k].mean()), 4),
                          "in_range": round(float(((s[k] >= lo) & (s[k] <= hi)).mean()), 3)} for s in segs]
        out[k] = row
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--store", default="data/store.zarr")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--bars", type=int, default=64)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=256, help="segment = training window (steps)")
    ap.add_argument("--repeats", type=int, default=5, help="timed generations per variant (0: no timing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, _ = load_model(args.checkpoint)
    spb, bpp = model.steps_per_bar, model.bars_per_phrase
    window_bars = args.seq_len // spb
    real = real_metrics(Store(args.store), args.split, args.seq_len, spb, bpp)
    generated, seconds, div = {}, {}, {}
    bounded, unbounded = with_horizon(model, window_bars), with_horizon(model, 0)
    for name, m in ((f"horizon_{window_bars}", bounded), ("unbounded", unbounded)):
        t0 = time.perf_counter()
        rolls = m.generate(None, args.bars * spb, temperature=args.temperature, seed=args.seed,
                           batch_size=args.samples)
        seconds[name] = round(time.perf_counter() - t0, 2)
        generated[name] = segments((rolls > 0).numpy().astype(np.uint8), args.seq_len, spb, bpp)
        div[name] = divergence(bounded, unbounded, rolls, args.seq_len)
    result = {"checkpoint": args.checkpoint, "store": args.store, "split": args.split,
              "real_windows": int(len(real[SCALARS[0]])), "samples": args.samples, "bars": args.bars,
              "segment_bars": window_bars, "temperature": args.temperature, "seed": args.seed,
              "generate_seconds": seconds, "machine": platform.platform(), "divergence_bits": div,
              "amortised_ms_per_step": amortised_ms({f"horizon_{window_bars}": bounded, "unbounded": unbounded},
                                                    args.bars * spb, args.repeats) if args.repeats else None,
              "metrics": summary(real, generated)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
