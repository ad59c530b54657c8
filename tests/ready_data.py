"""Small real stores + real metrics (pipeline.metrics) + export, for the data-path tests.

`build_ready` goes store -> metrics -> export through the stage code on disk, into one folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.export import export
from pipeline.metrics import run as compute_metrics
from pipeline.store import Song, write_store


def make_songs(lengths, *, seed=0, splits=None, steps_per_bar=None, num_drums=9) -> list[Song]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        hits = (rng.random((n, num_drums)) < 0.25).astype(np.uint8)
        vel = hits * rng.integers(1, 128, size=hits.shape).astype(np.uint8)
        spb = 16 if steps_per_bar is None else steps_per_bar[i]
        out.append(Song(name=f"s{i}", hits=hits, velocity=vel,
                        split="train" if splits is None else splits[i],
                        steps_per_bar=spb, beats_per_bar=spb // 4))
    return out


def write_metrics(store_path: Path, metrics_path: Path, *, seq_len: int, stride: int, extra=()) -> dict:
    """The real metrics stage over `store_path` (local threads), window seq_len/stride."""
    cfg = compose([f"paths.store='{store_path}'", f"paths.metrics='{metrics_path}'",
                   f"window.seq_len={seq_len}", f"window.stride={stride}", "metrics.num_workers=1", *extra])
    return compute_metrics(cfg)


def build_ready(root: Path, songs: list[Song], *, seq_len: int, stride: int, chunk_steps: int = 64,
                metric_names: list[str] | None = None) -> Path:
    """metric_names: the window metrics exported (None: all of them, so tests can check any)."""
    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "test-hash"}
    write_store(root / "store.zarr", songs, attrs, chunk_steps=chunk_steps)
    write_metrics(root / "store.zarr", root / "metrics.zarr", seq_len=seq_len, stride=stride)
    export(root / "store.zarr", root / "metrics.zarr", root / "ready", seq_len=seq_len, stride=stride,
           metric_names=metric_names)
    return root / "ready"
