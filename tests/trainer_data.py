"""A tiny real dataset for the trainer tests: store -> metrics stage -> export, on disk.

Songs are simple, learnable grooves (kick/snare/hi-hat with random variation) so a few steps of
training visibly move the model; windows are 64 steps (one phrase) to keep every run seconds long.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.store import Song, write_store

SEQ_LEN, STRIDE = 64, 16


def grooves(num_songs: int = 16, bars: int = 8, seed: int = 0, short_bars: int = 0) -> list[Song]:
    """`short_bars` > 0: every third song has that many bars only (with 64-step windows and
    short_bars < 4, a padded window)."""
    rng = np.random.default_rng(seed)
    D, spb = 9, 16
    songs = []
    for i in range(num_songs):
        T = (short_bars if short_bars and i % 3 == 0 else bars) * spb
        hits = np.zeros((T, D), np.uint8)
        hh_every = 2 if i % 2 else 4
        hits[::hh_every, 2] = 1                   # closed hi-hat
        hits[0::8, 0] = 1                         # kick
        hits[4::8, 1] = 1                         # snare
        hits |= (rng.random((T, D)) < 0.03).astype(np.uint8)   # humanised extras
        vel = hits * rng.integers(60, 120, size=hits.shape).astype(np.uint8)
        split = "validation" if i % 4 == 3 else "train"
        songs.append(Song(name=f"g{i}", hits=hits, velocity=vel, split=split, style="test"))
    return songs


def build_tiny_ready(root: Path, num_songs: int = 16, bars: int = 8, short_bars: int = 0) -> list[str]:
    """Build root/{store.zarr,metrics.zarr,ready} with the real stage code; return the overrides
    that point the trainer at it (tiny model, tiny trainer)."""
    from pipeline.export import export
    from pipeline.metrics import run as run_metrics

    overrides = [f"paths.data_dir={root}", f"paths.runs={root}/runs", f"window.seq_len={SEQ_LEN}",
                 f"window.stride={STRIDE}", "metrics.num_workers=1"]
    if not (root / "ready" / "manifest.json").exists():
        attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": f"tiny-{num_songs}-{bars}-{short_bars}"}
        write_store(root / "store.zarr", grooves(num_songs, bars, short_bars=short_bars), attrs, chunk_steps=256)
        cfg = compose(overrides)
        run_metrics(cfg)
        export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=SEQ_LEN, stride=STRIDE)
    return overrides + ["trainer=tiny", "model.step_hidden_dim=16", "model.bar_hidden_dim=8",
                        "model.phrase_hidden_dim=8", "model.num_layers=1", "model.dropout=0.0"]
