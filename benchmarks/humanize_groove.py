"""Humanize quantised Groove validation songs and compare with the original performances.

    python benchmarks/humanize_groove.py --checkpoint runs/groove_expr/checkpoints [--songs 40]

For each validation song of data/groove/store.zarr (the bar grid the model was trained on): the
hits alone (quantised, no velocity) go through `humanize_roll`; on its hits, the predicted velocity
and offset are compared with the original's (velocity correlation and MSE in (v/127)^2, offset MSE
in steps^2), beside the baseline (train mean velocity per drum and bar position; zero offset).
Prints one JSON object. Figures: docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.store import Store  # noqa: E402
from train.evaluate.velocity_offset_scores import position_means  # noqa: E402
from train.humanize import humanize_roll  # noqa: E402
from train.training.checkpoint import load_for_inference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--store", default=str(REPO / "data/groove/store.zarr"))
    ap.add_argument("--songs", type=int, default=40)
    args = ap.parse_args()
    model, _, path = load_for_inference(args.checkpoint)
    spb = int(model.config["steps_per_bar"])
    store = Store(args.store)
    same = store.meta["steps_per_bar"] == spb
    train = np.flatnonzero((store.meta["split"] == "train") & same)
    val = np.flatnonzero((store.meta["split"] == "validation") & same)[: args.songs]
    means = position_means(store, train, spb)
    t0 = time.perf_counter()
    rows = {"true_v": [], "true_o": [], "pred_v": [], "pred_o": [], "base_v": []}
    for i in val:
        sl = store.song_slice(int(i))
        hits, vel, off = (np.asarray(a[sl]) for a in (store.hits, store.velocity, store.offset))
        pv, po = humanize_roll(model, hits)
        h = hits > 0
        rows["true_v"].append(vel[h] / 127), rows["true_o"].append(off[h] / 128)
        rows["pred_v"].append(pv[h]), rows["pred_o"].append(po[h])
        rows["base_v"].append(means[np.arange(len(hits)) % spb][h])
    r = {k: np.concatenate(v) for k, v in rows.items()}
    out = {"checkpoint": str(path), "songs": len(val), "hits": int(len(r["true_v"])),
           "seconds": round(time.perf_counter() - t0, 1)}
    for name, v, o in (("model", r["pred_v"], r["pred_o"]), ("baseline", r["base_v"], 0 * r["true_o"])):
        out[name] = {"velocity_corr": round(float(np.corrcoef(v, r["true_v"])[0, 1]), 4),
                     "velocity_mse": round(float(np.mean((v - r["true_v"]) ** 2)), 5),
                     "offset_mse": round(float(np.mean((o - r["true_o"]) ** 2)), 5)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
