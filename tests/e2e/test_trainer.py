"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Trainer building blocks on their own: optimizers, schedules, checkpoints, config checks, rewards.
The rest is tests/unit/test_trainer.py."""
import math
import subprocess
import sys

import numpy as np

from common.config import REPO_ROOT, compose
from train.training.checkpoint import load_checkpoint


def test_cli_bad_config_exits_2_with_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "train", "trainer.precision=16", f"paths.ready={tmp_path}",
                          f"hydra.run.dir={tmp_path}/hydra",
                          f"paths.runs={tmp_path}/runs"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "trainer.precision=16:" in out.stderr
    assert not (tmp_path / "runs").exists()           # nothing was started


def test_songs_of_every_meter_train_in_batches_of_one_meter(tmp_path):
    """4/4, 3/4 and 5/4 songs in one export: the run trains on every window (batches bucketed by
    meter), sizes the position tables for the longest bar (20 steps) and keeps it in the checkpoint."""
    from pipeline.drums import DrumMap
    from pipeline.export import export
    from pipeline.metrics import run as run_metrics
    from pipeline.store import Song, write_store
    from tests.trainer_data import grooves
    from train.training.trainer import fit

    songs = []
    for i, (spb, beats) in enumerate([(16, 4)] * 4 + [(12, 3)] * 4 + [(20, 5)] * 2):
        g = grooves(1, bars=8, seed=i)[0]                       # a 16-step groove, re-barred
        songs.append(Song(name=f"m{i}", hits=g.hits[:8 * spb], velocity=g.velocity[:8 * spb],
                          split="validation" if i % 4 == 3 else "train", steps_per_bar=spb, beats_per_bar=beats))
    overrides = [f"paths.data_dir={tmp_path}", "window.seq_len=64", "window.stride=16", "metrics.num_workers=1"]
    write_store(tmp_path / "store.zarr", songs, {**DrumMap.default().to_attrs(), "steps_per_quarter": 4,
                                                  "source_hash": "meters"})
    cfg = compose(overrides)
    run_metrics(cfg)
    export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=64, stride=16)
    summary = fit(compose(overrides + ["trainer=tiny", "model.step_hidden_dim=8", "model.bar_hidden_dim=8",
                                       "model.phrase_hidden_dim=8", "model.num_layers=1", f"trainer.run_dir={tmp_path}/run",
                                       "trainer.max_epochs=1", "trainer.limit_train_batches=-1", "trainer.batch_size=4"]))
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["model_config"]["max_steps_per_bar"] == 20 and last["model_config"]["steps_per_bar"] == 16
    assert last["bar_lengths"] == [12, 16, 20]                  # the meters it learnt (generate warns for others)
    windows = np.load(tmp_path / "ready" / "windows_train.npy")
    per_meter = np.unique(np.array([songs[s].steps_per_bar for s in windows[:, 1]]), return_counts=True)
    # drop_last per meter: a meter's tail smaller than a batch is cut, unless it holds less than one batch
    want = sum(n // 4 if n >= 4 else 1 for n in per_meter[1])
    assert last["global_step"] == want and math.isfinite(summary["best_val_loss"])


def test_early_stopping_ends_a_run_that_stops_improving(tiny, tmp_path):
    from train.training.trainer import fit

    summary = fit(compose(tiny + [f"trainer.run_dir={tmp_path}", "trainer.max_epochs=6",
                                  "trainer.optimizer.config.lr=0.0", "trainer.early_stopping.patience=2"]))
    assert summary["epochs"] == 3                  # epoch 1 sets the best, 2 and 3 do not improve


def test_resume_from_an_explicit_path_continues_counting(tiny, tmp_path):
    from train.training.trainer import fit

    first = fit(compose(tiny + [f"trainer.run_dir={tmp_path}/a", "trainer.max_epochs=1"]))
    path = tmp_path / "a" / "checkpoints" / "last.pt"
    second = fit(compose(tiny + [f"trainer.run_dir={tmp_path}/b", "trainer.max_epochs=2",
                                 f"trainer.resume={path}"]))
    assert second["global_step"] == 2 * first["global_step"] and second["epochs"] == 2
