"""Window metrics: compiled kernels vs the per-window numpy reference; prints JSON.

    python benchmarks/metrics.py [--steps 1000000] [--ref-windows 400]

One core (NUMBA_NUM_THREADS=1; the kernels are single-threaded anyway), all windows at stride 1
of a random roll with D = 9, at seq_len 128 / 512 / 2048. The reference is far too slow for all
~10^6 windows: it runs on the first --ref-windows windows and its windows/s is extrapolated.
"memory_floor_s" is the time to allocate and write every output array once (np.ones), the
least any implementation must spend; kernel_s / memory_floor_s says how close the kernels are.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import kernels  # noqa: E402
import kernels.reference as ref  # noqa: E402
from kernels.spec import WINDOW_SCHEMA, window_grid  # noqa: E402


def best_of(fn, repeat):
    """(CPU s, wall s), best of `repeat`. CPU seconds of this one-thread process are robust to
    other jobs on a shared machine; wall time is reported beside them."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        del out
    return min(cpu), min(wall)


def memory_floor(num_windows, D, num_bars, bins):
    def write():
        return {name: np.ones((num_windows, *shape(D, num_bars, bins)), dtype)
                for name, (dtype, shape) in WINDOW_SCHEMA.items()}
    return write


def stage_on_groove(groove: str) -> dict:
    """The whole `metrics` stage (read store, dask threads, write metrics.zarr) over Groove."""
    import tempfile

    from pipeline.build import build
    from common.config import compose
    from pipeline.ingest import ingest
    from pipeline.metrics import run
    out = {}
    with tempfile.TemporaryDirectory() as d:
        base = ["data=groove", f"data.path={groove}", f"paths.data_dir={d}"]
        ingest(compose(base))
        build(compose(base))
        for stride in ("default", 1):
            cfg = compose(base + ([] if stride == "default" else [f"window.stride={stride}"]))
            c0, w0 = time.process_time(), time.perf_counter()
            summary = run(cfg)
            out[f"stride_{cfg.window.stride}"] = {
                "seq_len": cfg.window.seq_len, "songs": summary["songs"], "windows": summary["windows"],
                "wall_s": round(time.perf_counter() - w0, 2), "cpu_s": round(time.process_time() - c0, 2)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--drums", type=int, default=9)
    ap.add_argument("--ref-windows", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--groove", help="also time the whole stage over this Groove MIDI Dataset folder")
    args = ap.parse_args()
    if args.groove:
        print(json.dumps({"benchmark": "metrics_stage_groove",
                          **stage_on_groove(args.groove)}, indent=1))
    rng = np.random.default_rng(0)
    # Groove-like density: ~15% of (step, drum) cells hit
    roll = (rng.random((args.steps, args.drums)) < 0.15).astype(np.uint8)
    kernels.window_metrics(roll[:4096], seq_len=128)            # compile / load the cache
    results = {}
    for seq_len in args.seq_lens:
        W = len(window_grid(args.steps, seq_len, 1)[0])
        k_s, k_wall = best_of(lambda seq_len=seq_len: kernels.window_metrics(roll, seq_len=seq_len), args.repeat)
        floor_s, _ = best_of(memory_floor(W, args.drums, seq_len // 16, 16), args.repeat)
        r_s, _ = best_of(lambda seq_len=seq_len: ref.window_metrics(roll[:seq_len + args.ref_windows], seq_len=seq_len,
                                                    max_windows=args.ref_windows), 1)
        k_wps, r_wps = W / k_s, args.ref_windows / r_s
        results[seq_len] = {
            "windows": W, "kernel_s": round(k_s, 3), "kernel_wall_s": round(k_wall, 3), "kernel_windows_per_s": round(k_wps),
            "reference_windows_per_s": round(r_wps, 1),
            "reference_extrapolated_s": round(W / r_wps, 1),
            "speedup": round(k_wps / r_wps, 1),
            "memory_floor_s": round(floor_s, 3), "kernel_over_floor": round(k_s / floor_s, 2),
            "output_mb": round(sum(np.dtype(dt).itemsize * W * int(np.prod(shape(args.drums, seq_len // 16, 16)))
                                   for dt, shape in WINDOW_SCHEMA.values()) / 2**20, 1)}
    first, last = str(args.seq_lens[0]), str(args.seq_lens[-1])
    results = {str(k): v for k, v in results.items()}
    print(json.dumps({
        "benchmark": "window_metrics", "steps": args.steps, "drums": args.drums, "stride": 1,
        "reference_note": f"reference timed on the first {args.ref_windows} windows, windows/s extrapolated",
        "threads": 1, "timer": "process_time, best of repeats", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "seq_len": results,
        f"kernel_time_ratio_{last}_over_{first}": round(results[last]["kernel_s"] / results[first]["kernel_s"], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
