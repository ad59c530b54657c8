"""How much a song's own past playing tells about its next hits, with no model.

    python benchmarks/played_history.py [--store data/groove/store.zarr]

On every hit of the validation songs (16-step bars), velocity / 127 MSE of
- baseline:   the train split's mean per drum and bar position (train.evaluate.velocity_offset_scores);
- song shift: the baseline + the running mean of this song's past residuals (velocity − baseline
              over all hits of earlier steps): causal, one number per song so far;
- last:       the drum's previous velocity in the song;
and offset (steps) MSE of 0 (on the grid), the drum's previous offset, and half of it.
Prints one JSON object. Figures: docs/changelog.md (2026-11-30, velocity and timing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.store import Store  # noqa: E402
from train.evaluate.velocity_offset_scores import position_means  # noqa: E402


def song_predictions(hits, vel, off, means, spb):
    """(baseline, song shift, last velocity, last offset) [T, D] for one song (velocity / 127, offset in steps)."""
    base = means[np.arange(len(hits)) % spb]
    res = np.where(hits, vel - base, 0).sum(1)
    count = hits.sum(1)
    shift = np.concatenate([[0.0], np.cumsum(res)[:-1] / np.maximum(np.cumsum(count)[:-1], 1)])
    last_v, last_o = np.zeros(hits.shape), np.zeros(hits.shape)
    lv, lo = means.mean(0), np.zeros(hits.shape[1])
    for t in range(len(hits)):
        last_v[t], last_o[t] = lv, lo
        lv, lo = np.where(hits[t], vel[t], lv), np.where(hits[t], off[t], lo)
    return base, base + shift[:, None], last_v, last_o


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(REPO / "data/groove/store.zarr"))
    ap.add_argument("--steps-per-bar", type=int, default=16)
    args = ap.parse_args()
    s, spb = Store(args.store), args.steps_per_bar
    same = s.meta["steps_per_bar"] == spb
    means = position_means(s, np.flatnonzero((s.meta["split"] == "train") & same), spb)
    cols = {k: [] for k in ("true_v", "true_o", "baseline", "song_shift", "last_v", "last_o")}
    for i in np.flatnonzero((s.meta["split"] == "validation") & same):
        sl = s.song_slice(int(i))
        hits = np.asarray(s.hits[sl]) > 0
        vel, off = np.asarray(s.velocity[sl]) / 127.0, np.asarray(s.offset[sl]) / 128.0
        for k, a in zip(("baseline", "song_shift", "last_v", "last_o"), song_predictions(hits, vel, off, means, spb)):
            cols[k].append(a[hits])
        cols["true_v"].append(vel[hits]), cols["true_o"].append(off[hits])
    c = {k: np.concatenate(v) for k, v in cols.items()}

    def mse(pred, true):
        return round(float(np.mean((pred - c[true]) ** 2)), 5)
    print(json.dumps({"hits": len(c["true_v"]),
                      "velocity_mse": {"baseline": mse(c["baseline"], "true_v"), "song_shift": mse(c["song_shift"], "true_v"),
                                       "last": mse(c["last_v"], "true_v")},
                      "offset_mse": {"zero": mse(0 * c["true_o"], "true_o"), "last": mse(c["last_o"], "true_o"),
                                     "half_last": mse(0.5 * c["last_o"], "true_o")}}))


if __name__ == "__main__":
    main()
