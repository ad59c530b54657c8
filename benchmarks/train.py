"""Trainer throughput: samples/s and the data-wait fraction for the default config on CPU, 1 and 2 processes.

    python benchmarks/train.py [--songs 120] [--steps 30]

Builds a built-in-corpus dataset in a temporary directory with the real stage code
(corpus -> store -> metrics -> export), then runs `python -m train` (1 process) and
`torchrun --nproc_per_node=2 -m train` (2 processes, gloo) with the default trainer and model
config for `--steps` optimizer steps, and prints one JSON object. samples/s counts the global
batch (batch_size × processes) per second of step time; data_wait_fraction is the share of step
time spent waiting for the next batch (target ≤ 0.05).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(root: Path, songs: int) -> None:
    from common.config import compose
    from pipeline.corpus import generate_corpus
    from pipeline.drums import DrumMap
    from pipeline.export import export
    from pipeline.metrics import run as run_metrics
    from pipeline.store import write_store

    corpus = generate_corpus(songs, 0)
    for i, s in enumerate(corpus):     # 70/15/15 by song
        s.split = "train" if i % 20 < 14 else ("validation" if i % 20 < 17 else "test")
    write_store(root / "store.zarr", corpus, {**DrumMap.default().to_attrs(), "steps_per_quarter": 4,
                                              "source_hash": f"bench-{songs}"})
    cfg = compose([f"paths.data_dir={root}"])
    run_metrics(cfg)
    export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=int(cfg.window.seq_len),
           stride=int(cfg.window.stride))


def run(root: Path, nproc: int, steps: int) -> dict:
    run_dir = root / f"run{nproc}"
    args = [f"paths.data_dir={root}", f"trainer.run_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra",
            "trainer.resume=never", "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}",
            "trainer.limit_val_batches=1", "trainer.progress_bar=false", "trainer.save_top_k=0"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "train", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "train", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"processes": nproc, "steps": m["global_step"], "samples_per_s": round(m["samples_per_s"], 1),
            "data_wait_fraction": round(m["data_wait_fraction"], 4), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--songs", type=int, default=120)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, a.songs)
        results = [run(root, n, a.steps) for n in (1, 2)]
    from common.config import compose

    cfg = compose([])
    print(json.dumps({"benchmark": "train", "config": {
        "batch_size_per_process": int(cfg.trainer.batch_size), "seq_len": int(cfg.window.seq_len),
        "model": {k: cfg.model[k] for k in ("step_hidden_dim", "num_layers", "rnn_type", "use_transformer")},
        "num_threads": int(cfg.trainer.num_threads)},
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "results": results}, indent=1))


if __name__ == "__main__":
    main()
