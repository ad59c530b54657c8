"""Small real stores + metrics for the data-path tests and the loader benchmark.

`write_metrics_layout` writes the metrics.zarr layout of docs/architecture.md directly (window
table + a few window metrics computed here in numpy), so the loader can be tested on its own;
`build_ready` goes store -> metrics -> export through the real code on disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.drums import DrumMap
from pipeline.export import expected_windows, export, store_hash
from pipeline.store import Song, Store, write_store


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


def write_metrics_layout(store_path: Path, metrics_path: Path, *, seq_len: int, stride: int,
                         steps_per_bar: int = 16, bars_per_phrase: int = 4) -> None:
    store = Store(store_path)
    song, start = expected_windows(store.song_offsets, seq_len, stride)
    T = np.diff(store.song_offsets)
    length = np.minimum(T[song], seq_len)
    hits = store.hits[:]
    W, D = len(song), store.num_drums
    avg = np.zeros(W, np.float32)
    dens = np.zeros((W, D), np.float32)
    bar_hits = np.zeros((W, seq_len // steps_per_bar), np.int32)
    for w in range(W):
        a = store.song_offsets[song[w]] + start[w]
        x = hits[a:a + length[w]].astype(np.int64)
        avg[w] = x.sum() / length[w]
        dens[w] = x.mean(axis=0)
        nb = length[w] // steps_per_bar
        bar_hits[w, :nb] = x[:nb * steps_per_bar].reshape(nb, steps_per_bar, D).sum(axis=(1, 2))
    root = zarr.open_group(str(metrics_path), mode="w", zarr_format=3)
    win = root.create_group("window")
    for name, arr in {"song": song, "start": start, "length": length.astype(np.int64),
                      "avg_hits": avg, "drum_density": dens, "bar_hits": bar_hits}.items():
        win.create_array(name, data=arr)
    root.attrs.update({"seq_len": seq_len, "stride": stride, "bars_per_phrase": bars_per_phrase,
                       "store_hash": store_hash(store.attrs), "steps_per_bar": steps_per_bar,
                       "metric_names": ["avg_hits", "drum_density", "bar_hits"]})


def build_ready(root: Path, songs: list[Song], *, seq_len: int, stride: int, chunk_steps: int = 64) -> Path:
    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "test-hash"}
    write_store(root / "store.zarr", songs, attrs, chunk_steps=chunk_steps)
    write_metrics_layout(root / "store.zarr", root / "metrics.zarr", seq_len=seq_len, stride=stride)
    export(root / "store.zarr", root / "metrics.zarr", root / "ready", seq_len=seq_len, stride=stride)
    return root / "ready"
