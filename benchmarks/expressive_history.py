"""Warm-start expressive heads with a played history on a trained checkpoint's frozen hit model.

    python benchmarks/expressive_history.py --checkpoint /work/main/runs/groove_cpu/checkpoints \
        --out runs/groove_hist/checkpoints/last.pt [--steps 300]

The velocity target (error at least 25% below the per-drum-and-position baseline) on a 2-core
machine without retraining the hit model: the checkpoint's
model is rebuilt with `expressive_history=true`, every weight but the expressive heads' is copied
and frozen, and the heads (new: they also read the steps' played velocity and offset) are trained
alone on the train split with the trainer's losses (teacher forced MSE on true-hit cells), the hit
model run without gradient. The result is an ordinary checkpoint (`python -m train.evaluate`,
`benchmarks/humanize_groove.py`). Prints one JSON line per `--log-every` steps, then a summary.
Figures: docs/changelog.md (2026-11-30, velocity and timing).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.training.checkpoint import load_for_inference, save_checkpoint  # noqa: E402
from train.training.data import CompleteHierarchicalDrumDataset, make_loader  # noqa: E402
from train.model.expressive import expressive_terms  # noqa: E402
from train.model import HierarchicalDrumModel  # noqa: E402

KEEP = ("config", "drum_names", "drum_pitches", "steps_per_quarter", "epoch", "global_step")


def warm_model(source: HierarchicalDrumModel) -> HierarchicalDrumModel:
    """`source`'s model with history heads: every non-head weight copied and frozen."""
    model = HierarchicalDrumModel.from_config({**source.config, "expressive": True, "expressive_history": True})
    own = {k: v for k, v in source.state_dict().items() if not k.startswith("expressive.")}
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("expressive.") for k in missing), (missing, unexpected)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("expressive."))
    return model.eval()                  # the frozen hit model without dropout; the heads have none


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--ready", default=str(REPO / "data/groove/ready"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-cpu-s", type=float, default=None, help="stop (and save) after this much CPU time")
    ap.add_argument("--max-wall-s", type=float, default=None, help="stop (and save) after this much wall time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source, ckpt, path = load_for_inference(args.checkpoint)
    model = warm_model(source)
    cfg, w = ckpt["config"], ckpt["config"]["window"]
    ds = CompleteHierarchicalDrumDataset(args.ready, "train", seq_len=int(cfg["trainer"]["seq_len"]),
                                         stride=int(w["stride"]), steps_per_bar=int(w["steps_per_bar"]),
                                         bars_per_phrase=int(w["bars_per_phrase"]), fields=("velocity", "offset"))
    loader = make_loader(ds, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    t0, c0, step, seen = time.perf_counter(), time.process_time(), 0, {"velocity": 0.0, "offset": 0.0}
    def out_of_time() -> bool:
        return bool((args.max_cpu_s and time.process_time() - c0 > args.max_cpu_s)
                    or (args.max_wall_s and time.perf_counter() - t0 > args.max_wall_s))

    while step < args.steps:
        loader.sampler.set_epoch(step)
        for batch in loader:
            with torch.no_grad():
                z = model.features(batch["step"], batch["start"])[0]
            terms = expressive_terms(model.expressive_preds(z, batch["step"], batch["velocity"], batch["offset"]), batch)
            opt.zero_grad()
            (terms["velocity"] + terms["offset"]).backward()
            opt.step()
            step += 1
            for k in seen:
                seen[k] += float(terms[k].detach()) / args.log_every
            if step % args.log_every == 0:
                print(json.dumps({"step": step, **{k: round(v, 5) for k, v in seen.items()},
                                  "cpu_s": round(time.process_time() - c0, 1)}), flush=True)
                seen = dict.fromkeys(seen, 0.0)
            if step >= args.steps or out_of_time():
                break
        if out_of_time():
            break
    out = {k: ckpt[k] for k in KEEP if k in ckpt}
    out.update(model=model.state_dict(), model_config=model.config,
               warm_start={"from": str(path), "steps": step, "batch_size": args.batch_size, "lr": args.lr})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, out)
    print(json.dumps({"checkpoint": args.out, "from": str(path), "steps": step,
                      "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}))


if __name__ == "__main__":
    main()
