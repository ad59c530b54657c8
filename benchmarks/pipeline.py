"""The data stages at corpus sizes, side by side with another checkout of the code; prints JSON.

    python benchmarks/pipeline.py --steps 1e6 1e7 [--old /tmp/old] [--stages ingest build metrics export]

For every size and every code tree (this one, and `--old`, e.g. `git worktree add /tmp/old 59db6a3`)
each stage runs in its own fresh interpreter with that tree on PYTHONPATH (so its peak RSS is its
own), on the built-in corpus with ~690 steps per song. Per stage: wall and CPU seconds, peak RSS;
per run: bytes on disk of interim/, store, metrics, ready/, the raw hit + velocity bytes, and a
content hash (pipeline.store.content_hash of this tree) of the store and of the metrics output, so
two trees can be shown to write identical data, and a hash of each array in them (where one tree
writes an array the other does not, the arrays both write can still be compared). A tiny warm-up
run first compiles each tree's numba kernels (compilation is not what is measured). Figures and the machine: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_SONG = 690        # mean length of a built-in corpus song (conf/data/builtin.yaml)

STAGE = """
import json, resource, sys, time
from common.config import compose
cfg = compose(sys.argv[2:])
t0, c0 = time.perf_counter(), time.process_time()
stage = sys.argv[1]
if stage == "ingest":
    from pipeline.ingest import ingest; ingest(cfg)
elif stage == "build":
    from pipeline.build import build; build(cfg)
elif stage == "metrics":
    from pipeline.metrics import run; run(cfg)
elif stage == "export":
    import inspect
    from pipeline.export import export
    new = "metric_names" in inspect.signature(export).parameters    # this tree: the configured metrics only
    export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready,
           **({"metric_names": list(cfg.export.metrics)} if new else {}))
print(json.dumps({"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def array_hashes(path: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of each array's dtype, shape and values: trees whose stores differ in
    some array (the offset array that expressive timing added) can still show the rest identical."""
    import hashlib

    import numpy as np
    import zarr

    out = {}
    for name, node in sorted(zarr.open_group(str(path), mode="r").members(max_depth=None), key=lambda kv: kv[0]):
        if isinstance(node, zarr.Array):
            h = hashlib.sha256(f"{node.dtype} {node.shape}".encode())
            step = max(1, (1 << 20) // max(1, int(np.prod(node.shape[1:]))))
            for a in range(0, node.shape[0] if node.ndim else 1, step):
                h.update(np.ascontiguousarray(node[a:a + step] if node.ndim else node[()]).tobytes())
            out[name] = h.hexdigest()[:16]
    return out


def du(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stage(tree: Path, name: str, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-c", STAGE, name, *overrides], cwd=tree, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{tree} {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_tree(tree: Path, songs: int, stages: list[str], work: Path, extra: list[str]) -> dict:
    from pipeline.store import content_hash

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    overrides = ["data=builtin", f"data.corpus.num_songs={songs}", f"paths.data_dir={data}", *extra]
    out = {"tree": str(tree), "songs": songs}
    for name in stages:
        out[name] = stage(tree, name, overrides)
    sizes = {k: du(data / d) for k, d in (("interim", "interim"), ("store", "store.zarr"),
                                          ("metrics", "metrics.zarr"), ("ready", "ready"))}
    out["mb"] = {k: round(v / 2**20, 2) for k, v in sizes.items()}
    if (data / "store.zarr").exists():
        import zarr
        hits = zarr.open_group(str(data / "store.zarr"), mode="r")["hits"]
        out["steps"] = int(hits.shape[0])
        out["raw_hits_velocity_mb"] = round(2 * hits.shape[0] * hits.shape[1] / 2**20, 2)
        out["store_hash"] = content_hash(data / "store.zarr")[:16]
        out["store_arrays"] = array_hashes(data / "store.zarr")
    if (data / "metrics.zarr").exists():
        out["metrics_hash"] = content_hash(data / "metrics.zarr")[:16]
        out["metrics_arrays"] = array_hashes(data / "metrics.zarr")
    if sizes["store"]:
        out["interim_over_store"] = round(sizes["interim"] / sizes["store"], 2)
        out["ready_over_raw"] = round(sizes["ready"] / 2**20 / out["raw_hits_velocity_mb"], 2)
    shutil.rmtree(data, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--old", type=Path, help="another checkout to run side by side (e.g. commit 59db6a3)")
    ap.add_argument("--stages", nargs="+", default=["ingest", "build", "metrics", "export"])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--new-overrides", nargs="*", default=[], help="extra overrides for this tree only")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    trees = [REPO] + ([args.old.resolve()] if args.old else [])
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_pipeline_"))
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                      "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}), flush=True)
    for tree in trees:   # compile each tree's kernels once, outside the measurements
        run_tree(tree, 20, ["ingest", "build", "metrics"], work / "warm", [])
    for steps in args.steps:
        songs = max(1, round(steps / STEPS_PER_SONG))
        for tree in trees:
            extra = args.new_overrides if tree == REPO else []
            res = run_tree(tree, songs, args.stages, work / "run", extra)
            res["load_avg"] = os.getloadavg()
            print(json.dumps(res), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
