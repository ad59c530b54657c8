"""Loader throughput: batches/s and MB/s of the memory-mapped data path vs a raw np.memmap gather.

    python -m benchmarks.loader [--songs 200 --steps 4000 --batches 200]

Builds a real store (write_store) + a metrics.zarr with the window metrics' shapes + the real
`export` in a temp dir, then times, for batch 64 x seq_len 512 x D 9 with every metric:
  floor      fancy-index gather of the same bytes straight from np.memmap (hits, velocity, metric rows)
  get_batch  CompleteHierarchicalDrumDataset.get_batch (gather + float step + bar/phrase means, tensors)
  loader_wN  make_loader(..., num_workers=N) delivering collated torch batches (after a warm-up batch)
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
import zarr

from pipeline.drums import DrumMap
from pipeline.export import expected_windows, export, store_hash
from pipeline.store import Song, Store, write_store
from train.data import CompleteHierarchicalDrumDataset, WindowBatchSampler, make_loader

SEQ, STRIDE, SPB, BPP, BATCH, D = 512, 16, 16, 4, 64, 9


def metric_shapes(seq_len=SEQ, spb=SPB, d=D) -> dict:
    """The window metrics of kernels.window_metrics (issue 3) and their row shapes/dtypes."""
    f, i = np.float32, np.int32
    return {"avg_hits": ((), f), "max_hits": ((), i), "drum_density": ((d,), f), "co_occurrence": ((), f),
            "syncopation": ((), f), "transitions": ((d, d), f), "ioi_mean": ((d,), f), "ioi_var": ((d,), f),
            "ioi_hist": ((spb,), i), "fast_hits": ((), i), "ngram_unique": ((), i), "ngram_entropy": ((), f),
            "bar_hits": ((seq_len // spb,), i), "dense_bar_fraction": ((), f)}


def build(root: Path, songs: int, steps: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(songs):
        hits = (rng.random((steps, D)) < 0.15).astype(np.uint8)
        out.append(Song(name=f"b{s}", hits=hits, velocity=hits * rng.integers(1, 128, hits.shape, dtype=np.uint8),
                        split="train"))
    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "bench"}
    write_store(root / "store.zarr", out, attrs)
    song, start = expected_windows(Store(root / "store.zarr").song_offsets, SEQ, STRIDE)
    m = zarr.open_group(str(root / "metrics.zarr"), mode="w", zarr_format=3)
    w = m.create_group("window")
    w.create_array("song", data=song)
    w.create_array("start", data=start)
    w.create_array("length", data=np.full(len(song), SEQ, np.int64))
    for name, (shape, dtype) in metric_shapes().items():
        w.create_array(name, data=rng.random((len(song), *shape)).astype(dtype))
    m.attrs.update({"seq_len": SEQ, "stride": STRIDE, "bars_per_phrase": BPP,
                    "store_hash": store_hash(Store(root / "store.zarr").attrs)})
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


def time_loader(ds, n: int, repeats: int, workers: int) -> list[float]:
    loader = make_loader(ds, BATCH, seed=0, num_workers=workers)

    def epochs():
        for epoch in range(10**6):
            loader.sampler.set_epoch(epoch)
            yield from loader

    it = epochs()
    for _ in range(2 * max(workers, 1)):
        next(it)                    # start-up (worker spawn, numba cache load, first maps) is not throughput
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        times.append(time.perf_counter() - t0)
    del it, loader
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--songs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batches", type=int, default=150, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_s = build(root, args.songs, args.steps)
        ready = root / "ready"
        ds = CompleteHierarchicalDrumDataset(ready, "train", SEQ, STRIDE, SPB, BPP)
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
        for workers in (0, 2):
            results[f"loader_w{workers}"] = _rate(n, time_loader(ds, n, args.repeats, workers), batch_bytes)
        zarr_n = max(1, n // 10)
        results["zarr_direct_per_window"] = _rate(zarr_n, [time_zarr_direct(root, ds, batches[:zarr_n])], batch_bytes)
        base = results["floor_memmap_gather"]["batches_per_s"]
        for v in list(results.values())[1:]:
            v["vs_floor"] = round(v["batches_per_s"] / base, 3)
        print(json.dumps({
            "benchmark": "loader", "batch": BATCH, "seq_len": SEQ, "drums": D, "stride": STRIDE,
            "windows": len(ds), "steps": args.songs * args.steps, "metrics": len(ds.metric_names),
            "bytes_per_batch": batch_bytes, "export_s": round(export_s, 2),
            "store_MB": round(_du(root / "store.zarr") / 1e6, 2), "ready_MB": round(_du(ready) / 1e6, 2), "results": results,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
                       f"python {platform.python_version()}",
        }, indent=1))


if __name__ == "__main__":
    main()
