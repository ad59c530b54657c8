"""A tiny real store and a tiny real checkpoint for the evaluate/generate tests.

The store is written with pipeline.store.write_store; the checkpoint is a real
HierarchicalDrumModel, trained for a few dozen steps on the store's train split and saved with
train.training.checkpoint.save_checkpoint per the checkpoint contract (docs/architecture.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.drums import DrumMap
from pipeline.store import Song, write_store

SPB = 16
SEQ_LEN = 64
OVERRIDES = [f"window.seq_len={SEQ_LEN}", "window.stride=16", "window.bars_per_phrase=2"]


def groove_song(rng: np.random.Generator, bars: int, num_drums: int) -> np.ndarray:
    """One bar of kick/snare/hats repeated, with an occasional ghost note: learnable, not trivial."""
    bar = np.zeros((SPB, num_drums), np.uint8)
    bar[0::8, 0] = 1
    bar[rng.choice([4, 6]), 0] = rng.random() < 0.5
    bar[4::8, 1] = 1
    bar[0::2, 2] = 1
    roll = np.tile(bar, (bars, 1))
    ghosts = rng.random(roll.shape[0]) < 0.05
    roll[ghosts, 1] = 1
    return roll


def make_store(path: Path, seed: int = 0) -> Path:
    dm = DrumMap.default()
    rng = np.random.default_rng(seed)
    songs = []
    plan = [("train", 8)] * 8 + [("validation", 8)] * 3 + [("validation", 2.5), ("test", 6)]
    for i, (split, bars) in enumerate(plan):
        hits = groove_song(rng, 8, dm.num_drums)[: int(bars * SPB)]
        played = rng.integers(40, 128, hits.shape), rng.integers(-40, 41, hits.shape)   # as drummers play
        songs.append(Song(name=f"song{i}", hits=hits, velocity=(hits * played[0]).astype(np.uint8), split=split,
                          source=f"tiny/song{i}.mid", style=["rock", "funk/groove2"][i % 2],
                          beat_type=["beat", "fill"][i % 3 == 2], steps_per_bar=SPB,
                          offset=(hits * played[1]).astype(np.int8)))
    attrs = {**dm.to_attrs(), "steps_per_quarter": 4, "source_hash": f"tiny{seed}"}
    write_store(path, songs, attrs)
    return path


def make_ready(root: Path, seed: int = 0, songs: list[Song] | None = None) -> Path:
    """A data directory as `python -m pipeline` leaves it: store.zarr (make_store's, or `songs`),
    metrics.zarr and ready/ at the tiny window (seq_len 64, stride 16). Returns the directory."""
    from pipeline.export import export
    from tests.ready_data import write_metrics

    if songs is None:
        make_store(root / "store.zarr", seed)
    else:
        write_store(root / "store.zarr", songs, {**DrumMap.default().to_attrs(), "steps_per_quarter": 4,
                                                 "source_hash": f"songs{seed}"})
    write_metrics(root / "store.zarr", root / "metrics.zarr", seq_len=SEQ_LEN, stride=16)
    export(root / "store.zarr", root / "metrics.zarr", root / "ready", seq_len=SEQ_LEN, stride=16)
    return root


def make_checkpoint(path: Path, store: Path, train_steps: int = 40, use_transformer: bool = False,
                    output: str = "independent", conditioning: dict | None = None) -> Path:
    """Train a tiny model on the train split of `store` and save it as the trainer would; with
    `conditioning` ({condition: labels}), a model conditioned on those (trained on none of them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: threads only contend
    try:
        return _train_and_save(path, store, train_steps, use_transformer, output, conditioning or {})
    finally:
        torch.set_num_threads(threads)


def _train_and_save(path: Path, store: Path, train_steps: int, use_transformer: bool, output: str,
                    conditioning: dict) -> Path:
    from common.config import compose
    from pipeline.store import Store
    from train.training.checkpoint import save_checkpoint
    from train.model import HierarchicalDrumModel

    torch.manual_seed(0)
    cfg = compose(OVERRIDES + [f"paths.store={store}"])
    dm = DrumMap.default()
    model = HierarchicalDrumModel.from_config(dict(
        num_drums=dm.num_drums, step_hidden_dim=16, bar_hidden_dim=16, phrase_hidden_dim=16, num_layers=1, dropout=0.0,
        use_transformer=use_transformer, steps_per_bar=SPB, bars_per_phrase=2, nhead=2, output=output,
        head_hidden_dim=8, expressive=True, expressive_dim=8,   # heads untrained: varied, off-grid
        expressive_history=True, **({"conditioning": conditioning} if conditioning else {})))
    s = Store(store)
    hits = np.asarray(s.hits[:])
    windows = np.stack([hits[s.song_slice(int(i))][:SEQ_LEN] for i in s.songs_in_split("train")])
    x = torch.as_tensor(windows, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        loss = -model.step_log_prob(x).mean()          # bits per step, any output head
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = {"model": model.state_dict(), "model_config": model.config,
            "config": OmegaConf.to_container(cfg, resolve=True), "drum_names": list(dm.names),
            "drum_pitches": list(dm.pitches), "steps_per_quarter": 4, "epoch": 1, "global_step": train_steps}
    return save_checkpoint(path, ckpt)
