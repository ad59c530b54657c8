"""Scoring coverage and the baselines of `train.evaluate` on a built data directory (no model needed).

Prints JSON: the split's predictable steps, how many the previous rule scored (grid windows only,
positions 1..L-1 of each window) and the NLL of the steps it missed; every baseline's NLL and F1 with
bootstrap 95% intervals over songs, on the whole split and its subsets (beat/fill, style).

    python -m pipeline data=groove paths.data_dir=/tmp/groove_eval
    python -m benchmarks.groove_eval --data-dir /tmp/groove_eval [--split validation]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common.config import compose
from pipeline.store import Store
from train.evaluate.next_step import fit_baselines, score_windows, scores_with_intervals, song_subsets
from train.evaluate.scores import ScoreAccumulator
from train.evaluate.windows import songs_by_meter, split_songs, split_windows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data", default="groove")
    args = ap.parse_args()
    cfg = compose([f"data={args.data}", f"paths.data_dir={args.data_dir}"], config_name="evaluate")
    L, spb, bpp = int(cfg.window.seq_len), int(cfg.window.steps_per_bar), int(cfg.window.bars_per_phrase)
    t0 = time.perf_counter()
    windows = split_windows(cfg.paths.ready, args.split, L, L, spb, bpp)
    validation = windows if args.split == "validation" else split_windows(cfg.paths.ready, "validation", L, L, spb, bpp)
    train, bars = split_songs(cfg.paths.ready, "train", spb, L, bpp)
    baselines, _ = fit_baselines(cfg, train, bars, validation, windows.rows.shape[-1])
    # the previous rule: grid windows only (start + L <= T, or a short song's one window), steps 1..L-1
    lengths = np.diff(np.load(f"{cfg.paths.ready}/song_offsets.npy"))[windows.song]
    grid = (windows.start % L == 0) & ((windows.start + L <= lengths) | (windows.start == 0))
    old = windows.scored & grid[:, None] & (np.arange(L) < L - 1)[None, :]
    store = Store(cfg.paths.store)
    subsets = song_subsets(store, np.unique(windows.song), list(cfg.evaluate.subsets))
    meters = songs_by_meter(store.meta, np.unique(windows.song), int(store.attrs.get("steps_per_quarter", 4)))
    subsets.update({f"meter={m}": ids for m, ids in meters.items()} if len(meters) > 1 else {})
    out = {"split": args.split, "songs": int(len(np.unique(windows.song))), "windows": len(windows),
           "meters": {m: int(len(ids)) for m, ids in meters.items()},
           "predictable_steps": int(windows.scored.sum()), "previously_scored_steps": int(old.sum()),
           "baselines": {}, "subsets": {k: {"songs": int(len(v))} for k, v in subsets.items()}}
    out["previously_missed_fraction"] = round(1 - out["previously_scored_steps"] / out["predictable_steps"], 4)
    names = list(store.drum_names)
    for name, base in baselines.items():
        def predict(s, m, a, b, y=None, song=None, base=base):
            return base.predict(s, m, b, a)
        per_song = score_windows(predict, windows, len(names), 64)
        tau = (per_song if validation is windows else score_windows(predict, validation, len(names), 64)
               ).total().best_threshold()
        r = scores_with_intervals(per_song, tau, names, None, cfg.evaluate.bootstrap)
        parts = {}
        for label, mask in (("previously_scored", old), ("previously_missed", windows.scored & ~old)):
            acc = ScoreAccumulator(len(names))
            acc.update_targets(predict(windows.steps, windows.mask, windows.start, windows.steps_per_bar),
                               windows.targets, mask)
            parts[label] = round(acc.nll_bits / max(acc.steps, 1), 4)
        out["baselines"][name] = {"nll_bits_per_step": round(r["nll_bits_per_step"], 4), "f1": round(r["f1"], 4),
                                  "ci95": {k: [round(x, 4) for x in v] for k, v in r["ci95"].items()},
                                  "nll_by_coverage": parts}
        for key, ids in subsets.items():
            s = scores_with_intervals(per_song, tau, names, ids, cfg.evaluate.bootstrap)
            out["subsets"][key][name] = {"nll": round(s["nll_bits_per_step"], 3), "f1": round(s["f1"], 3),
                                         "nll_ci95": [round(x, 3) for x in s["ci95"]["nll_bits_per_step"]]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
