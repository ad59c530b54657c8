"""Window metrics: each family's kernels, the whole core, and the per-window numpy twin; prints JSON.

    python benchmarks/metrics.py [--steps 100000] [--ref-windows 200] [--compare /path/to/checkout ...]

One core (NUMBA_NUM_THREADS=1; the kernels are single-threaded), every window at stride 1 of a random
roll (D = 9, ~15% of cells hit, velocities and offsets on the hits), at seq_len 128 / 512 / 2048.
For each seq_len: every registered family alone (kernels/families.py: its fill plus its outputs'
allocation), the core (`kernels.window_metrics`: the families of the hits, with the input checks) and
all families (`kernels.all_window_metrics`, what the metrics stage computes per song); t(2048) / t(128)
of each is what the sliding kernels promise to keep near 1. The seed-style numpy (`kernels.reference`,
one window at a time) is far too slow for every window: it runs on the first --ref-windows windows and
its windows/s is extrapolated; `core_speedup` = core windows/s over it. CPU seconds (process_time,
best of --repeat): robust on a shared machine; wall seconds beside them. `--compare` times other checkouts
(e.g. the code before a change) in the same run, each in its own interpreter (its families when it
has kernels/families.py, else its core only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def best_of(repeat, fn, *args, **kwargs):
    """(CPU s, wall s) of fn(*args, **kwargs), best of `repeat`."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn(*args, **kwargs)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return round(min(cpu), 4), round(min(wall), 4)


def song(steps: int, drums: int):
    import numpy as np
    rng = np.random.default_rng(0)
    hits = (rng.random((steps, drums)) < 0.15).astype(np.uint8)          # Groove-like density
    vel = (hits * rng.integers(1, 128, hits.shape)).astype(np.uint8)
    off = (hits * rng.integers(-64, 65, hits.shape)).astype(np.int8)
    return hits, vel, off


def measure(steps: int, drums: int, seq_lens: list[int], repeat: int, ref_windows: int) -> dict:
    """The figures of the checkout on sys.path: per family (when it has kernels/families.py), core, all, reference."""
    import kernels
    hits, vel, off = song(steps, drums)
    kernels.window_metrics(hits[:4096], seq_len=128)                      # compile / load the cache
    families = _family_timers(hits, vel, off)
    for L in seq_lens:             # one untimed pass of everything first: the first timed seq_len ran
        for timer in families.values():       # ~1.7x slow without it (first big allocations)
            timer(L)
        kernels.window_metrics(hits, seq_len=L)
    out = {}
    for L in seq_lens:
        row = {"windows": steps - L + 1}
        for name, timer in families.items():
            row[f"{name}_s"] = best_of(repeat, timer, L)[0]
        row["core_s"], row["core_wall_s"] = best_of(repeat, kernels.window_metrics, hits, seq_len=L)
        if hasattr(kernels, "all_window_metrics"):
            row["all_s"] = best_of(repeat, kernels.all_window_metrics, hits, vel, off, seq_len=L)[0]
        if ref_windows:
            import kernels.reference as ref
            r_s = best_of(1, ref.window_metrics, hits[:L + ref_windows], seq_len=L, max_windows=ref_windows)[0]
            row["reference_windows_per_s"] = round(ref_windows / r_s, 1)
            row["reference_extrapolated_s"] = round(row["windows"] / row["reference_windows_per_s"], 1)
            row["core_speedup"] = round(row["windows"] / row["core_s"] / row["reference_windows_per_s"], 1)
        out[str(L)] = row
    first, last = str(seq_lens[0]), str(seq_lens[-1])
    ratios = {k[:-2]: round(out[last][k] / out[first][k], 2) for k in out[first]
              if k.endswith("_s") and k != "core_wall_s" and not k.startswith("reference")}
    return {"seq_len": out, f"time_ratio_{last}_over_{first}": ratios}


def _family_timers(hits, vel, off) -> dict:
    """{family: fn(seq_len)} timing one family's pass alone; {} for a checkout without families."""
    try:
        from kernels.families import FAMILIES
        from kernels.spec import check_expressive
        from kernels.window import _hit_song, compute
    except ImportError:
        return {}

    def timer(name):
        def run(L):
            s, dims = _hit_song(hits, L, 1, 16, 4, 4, 4, None, None, None, 4)
            _, s.velocity, s.offset = check_expressive(hits, vel, off)
            compute(s, (name,), {**dims, "positions": 16})
        return run
    return {name: timer(name) for name in FAMILIES}


def other_checkout(path: str, args) -> dict:
    """`measure` of another checkout (its own kernels and numba cache), in a fresh interpreter."""
    code = (f"import sys, json; sys.path[:0] = [{str(path)!r}, {str(ROOT / 'benchmarks')!r}]\n"
            "import metrics as b\n"
            f"print(json.dumps(b.measure({args.steps}, {args.drums}, {args.seq_lens}, {args.repeat}, 0)))")
    env = {**os.environ, "PYTHONPATH": str(path), "NUMBA_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def stage_on_groove(groove: str) -> dict:
    """The whole `metrics` stage (read store, dask threads, write metrics.zarr) over Groove."""
    import tempfile

    from common.config import compose
    from pipeline.build import build
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
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--drums", type=int, default=9)
    ap.add_argument("--ref-windows", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--compare", nargs="*", default=[],
                    help="other checkouts timed beside this one (e.g. the code before a change)")
    ap.add_argument("--groove", help="also time the whole stage over this Groove MIDI Dataset folder")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.groove:
        print(json.dumps({"benchmark": "metrics_stage_groove", **stage_on_groove(args.groove)}, indent=1))
    report = {"benchmark": "window_metrics", "steps": args.steps, "drums": args.drums, "stride": 1, "threads": 1,
              "timer": "process_time (CPU s), best of repeats",
              "reference_note": f"seed-style numpy timed on the first {args.ref_windows} windows, extrapolated",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"load average {os.getloadavg()[0]:.1f}",
              "this": measure(args.steps, args.drums, args.seq_lens, args.repeat, args.ref_windows)}
    report["compare"] = [{"path": path, **other_checkout(path, args)} for path in args.compare]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
