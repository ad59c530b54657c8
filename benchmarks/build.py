"""Throughput and peak memory of the data stages (ingest + build) on Groove and on a large built-in corpus.

    python benchmarks/build.py [--groove DIR] [--builtin-songs 15000] [--workers 2]

Each case runs in its own subprocess (a fresh interpreter, so its peak RSS is its own) and prints one
JSON object: files/s, steps/s and peak RSS per case. Figures and the machine: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_case(overrides: list[str]) -> dict:
    """Run ingest then build in this process; report times and this process's peak RSS."""
    sys.path.insert(0, str(REPO))
    from pipeline.build import build
    from common.config import compose
    from pipeline.ingest import ingest

    cfg = compose(overrides)
    t0 = time.perf_counter()
    report = ingest(cfg)
    t1 = time.perf_counter()
    summary = build(cfg)
    t2 = time.perf_counter()
    total = t2 - t1 + t1 - t0
    store_bytes = sum(f.stat().st_size for f in Path(cfg.paths.store).rglob("*") if f.is_file())
    return {"files": report["files"], "songs": summary["songs"], "steps": summary["steps"],
            "hits": summary["hits"], "ingest_s": round(t1 - t0, 2), "build_s": round(t2 - t1, 2),
            "files_per_s": round(report["files"] / total, 1), "steps_per_s": round(summary["steps"] / total),
            "build_steps_per_s": round(summary["steps"] / (t2 - t1)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "store_mb": round(store_bytes / 2**20, 2)}


def run_case(overrides: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--one", *overrides], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"case {overrides} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one_case(sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groove", default=os.environ.get("HIERDRUMS_GROOVE", str(REPO.parent / "shared/data/groove")))
    ap.add_argument("--builtin-songs", type=int, default=15000, help="~690 steps per song: 15000 -> > 10^7 steps")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    common = [f"ingest.workers={args.workers}", f"store.workers={args.workers}"]
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "workers": args.workers}}
    with tempfile.TemporaryDirectory() as tmp:
        out["groove"] = run_case(["data=groove", f"data.path={args.groove}", f"paths.data_dir={tmp}/groove", *common])
        out["builtin"] = run_case(["data=builtin", f"data.corpus.num_songs={args.builtin_songs}",
                                   f"paths.data_dir={tmp}/builtin", *common])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
