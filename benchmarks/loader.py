"""Loader throughput: batches/s and MB/s of the memory-mapped data path vs a raw np.memmap gather.

    python -m benchmarks.loader [--songs 200 --steps 4000 --batches 200]

Builds a real store (write_store), its metrics (the real `metrics` stage) and the real `export`
in a temp dir, then times, for batch 64 x seq_len 512 x D 9 with every metric:
  floor      fancy-index gather of the same bytes straight from np.memmap (hits, velocity, metric rows)
  get_batch  CompleteHierarchicalDrumDataset.get_batch (gather + float step + bar/phrase means, tensors)
  loader_w0  make_loader(..., num_workers=0) delivering collated torch batches (after warm-up batches)
  loader_w2_thread  the same with 2 prefetch threads (process workers were removed: they bought nothing)
  step_only / *_with_step  a stand-in training step (--step-k 256x256 matmuls, 1 torch thread) alone,
             and after each batch of the loader: how much of the gather the workers hide behind the step
  ipc_ceiling_w2_empty_buffer  a DataLoader with 2 workers handing over an empty shared buffer of one
             batch's tensor bytes, computing nothing: what worker hand-over alone allows here
MB/s counts the bytes gathered (uint8 rows + metric rows), the same for every line. Each line is the
best of --repeats timed runs (the median too): the machine may be shared. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.export import export
from pipeline.metrics import run as compute_metrics
from pipeline.store import Song, write_store
from train.training.data import CompleteHierarchicalDrumDataset, WindowBatchSampler, make_loader

SEQ, STRIDE, SPB, BPP, BATCH, D = 512, 16, 16, 4, 64, 9


def build(root: Path, songs: int, steps: int, seed: int = 0) -> float:
    """Store (write_store) -> metrics (the real stage) -> export; returns the export's seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(songs):
        hits = (rng.random((steps, D)) < 0.15).astype(np.uint8)
        out.append(Song(name=f"b{s}", hits=hits, velocity=hits * rng.integers(1, 128, hits.shape, dtype=np.uint8),
                        split="train"))
    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "bench"}
    write_store(root / "store.zarr", out, attrs)
    compute_metrics(compose([f"paths.data_dir='{root}'", f"window.seq_len={SEQ}", f"window.stride={STRIDE}"]))
    t0 = time.perf_counter()
    export(root / "store.zarr", root / "metrics.zarr", root / "ready", seq_len=SEQ, stride=STRIDE)
    return time.perf_counter() - t0


def time_zarr_direct(root: Path, ds, batches: list[np.ndarray]) -> float:
    """What the export saves: the same windows read from the zstd Zarr store, one slice per window."""
    store = zarr.open_group(str(root / "store.zarr"), mode="r")
    hits, vel = store["hits"], store["velocity"]
    t0 = time.perf_counter()
    for idx in batches:
        for a in ds.windows[idx, 4]:
            hits[a:a + SEQ], vel[a:a + SEQ]
    return time.perf_counter() - t0


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rate(n_batches: int, times: list[float], batch_bytes: int) -> dict:
    """Best and median of `times` (seconds for n_batches each): the machine is shared, best is the signal."""
    best, median = min(times), float(np.median(times))
    return {"batches_per_s": round(n_batches / best, 1), "MB_per_s": round(n_batches * batch_bytes / best / 1e6, 1),
            "median_batches_per_s": round(n_batches / median, 1)}


def time_floor(ready: Path, ds, batches: list[np.ndarray]) -> float:
    """The same bytes gathered by plain fancy indexing of np.memmap arrays: the memory floor."""
    hits = np.load(ready / "hits.npy", mmap_mode="r")
    vel = np.load(ready / "velocity.npy", mmap_mode="r")
    metrics = [np.load(ready / "metrics" / f"{n}.npy", mmap_mode="r") for n in ds.metric_names]
    table, steps = ds.windows, np.arange(SEQ)
    t0 = time.perf_counter()
    for idx in batches:
        t = table[idx]
        rows = t[:, 4, None] + steps
        hits[rows], vel[rows]
        for arr in metrics:
            arr[t[:, 0]]
    return time.perf_counter() - t0


def time_get_batch(ds, batches: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for idx in batches:
        ds.get_batch(idx)
    return time.perf_counter() - t0


def busy_step(a: torch.Tensor, k: int) -> None:
    """A stand-in training step: k single-threaded 256x256 matmuls (torch releases the GIL in them)."""
    for _ in range(k):
        a = a @ a
        a.clamp_(-1, 1)


def time_step_only(n: int, repeats: int, k: int) -> list[float]:
    a = torch.rand(256, 256) / 256
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            busy_step(a, k)
        times.append(time.perf_counter() - t0)
    return times


def time_loader(ds, n: int, repeats: int, workers: int, step_k: int = 0) -> list[float]:
    loader = make_loader(ds, BATCH, seed=0, num_workers=workers)

    def epochs(loader):
        for epoch in range(10**6):
            loader.sampler.set_epoch(epoch)
            yield from loader

    it = epochs(loader)
    for _ in range(2 * max(workers, 1)):
        next(it)                    # start-up (worker spawn, numba cache load, first maps) is not throughput
    a = torch.rand(256, 256) / 256
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
            if step_k:
                busy_step(a, step_k)
        times.append(time.perf_counter() - t0)
    del it, loader
    return times


class _EmptyShared(torch.utils.data.Dataset):
    """Returns a fresh shared-memory buffer of `nbytes`, computing nothing: the DataLoader's IPC alone."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i):
        return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(self.nbytes))


def time_ipc_ceiling(nbytes: int, n: int, repeats: int, workers: int = 2) -> list[float]:
    """Batches/s a DataLoader with `workers` can hand over at all for a buffer of one batch's size."""
    loader = torch.utils.data.DataLoader(_EmptyShared(nbytes), batch_size=None, num_workers=workers,
                                         persistent_workers=True, collate_fn=_identity)
    it = iter(loader)
    for _ in range(4):
        next(it)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        times.append(time.perf_counter() - t0)
    del it, loader
    return times


def _identity(x):
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--songs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batches", type=int, default=150, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-k", type=int, default=4, help="matmuls per stand-in training step (0: skip)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_s = build(root, args.songs, args.steps)
        ready = root / "ready"
        ds = CompleteHierarchicalDrumDataset(ready, "train", SEQ, STRIDE, SPB, BPP,   # as gathered before: all
                                             fields=("velocity",), levels=("bar", "phrase"))
        batches = [b.indices for b in WindowBatchSampler(len(ds), BATCH, seed=0)]
        n = min(args.batches, len(batches))
        metric_bytes = sum(np.load(ready / "metrics" / f"{k}.npy", mmap_mode="r")[0].nbytes
                           for k in ds.metric_names)
        batch_bytes = BATCH * (2 * SEQ * D + metric_bytes)
        time_floor(ready, ds, batches[:2]), time_get_batch(ds, batches[:2])          # warm caches, numba
        floor_t, get_t = [], []
        for r in range(args.repeats):                                 # interleaved: same machine weather
            chunk = [batches[(r * n + i) % len(batches)] for i in range(n)]
            floor_t.append(time_floor(ready, ds, chunk))
            get_t.append(time_get_batch(ds, chunk))
        results = {"floor_memmap_gather": _rate(n, floor_t, batch_bytes),
                   "get_batch": _rate(n, get_t, batch_bytes)}
        results["loader_w0"] = _rate(n, time_loader(ds, n, args.repeats, 0), batch_bytes)
        results["loader_w2_thread"] = _rate(n, time_loader(ds, n, args.repeats, 2), batch_bytes)
        if args.step_k:
            torch.set_num_threads(1)            # as the trainer's default (trainer.num_threads=1)
            results["step_only"] = _rate(n, time_step_only(n, args.repeats, args.step_k), batch_bytes)
            for name, workers in (("w0", 0), ("w2_thread", 2)):
                results[f"loader_{name}_with_step"] = _rate(
                    n, time_loader(ds, n, args.repeats, workers, args.step_k), batch_bytes)
        packed = sum(v.numel() * v.element_size() for k, v in ds.get_batch(batches[0]).items() if k != "metrics")
        packed += sum(v.numel() * v.element_size() for v in ds.get_batch(batches[0])["metrics"].values())
        results["ipc_ceiling_w2_empty_buffer"] = _rate(n, time_ipc_ceiling(packed, n, args.repeats), batch_bytes)
        zarr_n = max(1, n // 10)
        results["zarr_direct_per_window"] = _rate(zarr_n, [time_zarr_direct(root, ds, batches[:zarr_n])], batch_bytes)
        base = results["floor_memmap_gather"]["batches_per_s"]
        for v in list(results.values())[1:]:
            v["vs_floor"] = round(v["batches_per_s"] / base, 3)
        for k, v in results.items():        # 1.0: the loader costs the loop nothing beyond the step
            if k.endswith("_with_step"):
                v["vs_step_only"] = round(v["batches_per_s"] / results["step_only"]["batches_per_s"], 3)
        print(json.dumps({
            "benchmark": "loader", "batch": BATCH, "seq_len": SEQ, "drums": D, "stride": STRIDE,
            "step_k": args.step_k, "windows": len(ds), "steps": args.songs * args.steps, "metrics": len(ds.metric_names),
            "bytes_per_batch": batch_bytes, "tensor_bytes_per_batch": packed, "export_s": round(export_s, 2),
            "store_MB": round(_du(root / "store.zarr") / 1e6, 2), "ready_MB": round(_du(ready) / 1e6, 2), "results": results,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {load_before:.1f} before / "
                       f"{os.getloadavg()[0]:.1f} after, "
                       f"python {platform.python_version()}",
        }, indent=1))


if __name__ == "__main__":
    main()
