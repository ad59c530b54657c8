"""Teacher-forced velocity and timing scores of a model with expressive heads, beside baselines.

On every true-hit cell of steps 1..L-1 of the split's windows (the cells the heads predict, given
the true hits): velocity MSE in (velocity / 127)^2, offset MSE in steps^2, and the Pearson
correlation of predicted and true velocity. A model with `expressive_history` reads the true
velocity and offset of the steps before each predicted one (teacher forcing, like the hit NLL);
`benchmarks/humanize_groove.py` scores it feeding back its own predictions. Baselines on the same cells:

    velocity: the train split's mean velocity per drum and bar position, on the train songs of
              the window's meter (all train songs, positions mod its bar, where none has it; the
              drum's mean where a position has no hit in train; 64 where the drum never plays)
    offset:   0 (every hit on the grid)
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.store import Store
from train.model.expressive import OFFSET_UNITS, VELOCITY_SCALE


def played_windows(store: Store, song: np.ndarray, start: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """velocity / 127 and offset in steps [N, seq_len, D] of windows (song, start), 0 on padding."""
    N, D = len(song), store.num_drums
    vel, off = np.zeros((N, seq_len, D), np.float32), np.zeros((N, seq_len, D), np.float32)
    for n, (s, a) in enumerate(zip(song, start)):
        v, o = (store.rows(name, int(s), a, seq_len) for name in ("velocity", "offset"))
        vel[n, :len(v)], off[n, :len(o)] = v / VELOCITY_SCALE, o / OFFSET_UNITS
    return vel, off


def position_means(store: Store, ids: np.ndarray, steps_per_bar: int) -> np.ndarray:
    """[steps_per_bar, D] mean velocity / 127 of the hits at each bar position, per drum."""
    D = store.num_drums
    total, count = np.zeros((steps_per_bar, D)), np.zeros((steps_per_bar, D))
    for i in ids:
        v = np.asarray(store.velocity[store.song_slice(int(i))], np.float64) / VELOCITY_SCALE
        pos = np.arange(len(v)) % steps_per_bar
        np.add.at(total, pos, v)
        np.add.at(count, pos, v > 0)
    drum = np.divide(total.sum(0), count.sum(0), out=np.full(D, 64 / VELOCITY_SCALE), where=count.sum(0) > 0)
    return np.where(count > 0, total / np.maximum(count, 1), drum[None])


def _scores(pred_v: np.ndarray, pred_o: np.ndarray, true_v: np.ndarray, true_o: np.ndarray) -> dict:
    # undefined for a constant prediction or truth: 0 (no linear relation to report)
    pred_v, true_v = np.asarray(pred_v, np.float64), np.asarray(true_v, np.float64)
    spread = min(np.ptp(pred_v), np.ptp(true_v)) if len(true_v) else 0.0   # exact: float32 std of a constant is not 0
    corr = float(np.corrcoef(pred_v, true_v)[0, 1]) if spread > 0 else 0.0
    return {"velocity_mse": float(np.mean((pred_v - true_v) ** 2)),
            "offset_mse": float(np.mean((pred_o - true_o) ** 2)), "velocity_corr": corr}


@torch.no_grad()
def expressive_scores(model, store: Store, windows, ref: Store, train_ids: np.ndarray, steps_per_bar: int,
                      batch_size: int = 64, cond_of=None) -> dict:
    """{"hits", "model": {velocity_mse, offset_mse, velocity_corr}, "baseline": {...}} (module docstring)
    of `windows` of `store`; the baseline's means from songs `train_ids` of `ref`. Each window is
    read on its song's bar (windows.steps_per_bar; `steps_per_bar` is the model's). `cond_of`: song
    ids -> a conditioned model's condition ids (train.evaluate.next_step.song_conditions)."""
    L, D = windows.steps.shape[1], windows.steps.shape[2]
    vel, off = played_windows(store, windows.song, windows.start, L)
    # every scored step once: a song's last window overlaps the one before it (train.evaluate.windows)
    hit = (windows.steps[:, 1:] > 0) & windows.scored[:, :-1, None]
    base_v = np.zeros((len(windows), L - 1, D))
    pred_v, pred_o = np.zeros_like(base_v, np.float32), np.zeros_like(base_v, np.float32)
    train_bars = ref.meta["steps_per_bar"][train_ids]
    for spb in np.unique(windows.steps_per_bar):    # one meter at a time: its means, the model on its bar
        rows = np.flatnonzero(windows.steps_per_bar == spb)
        same = train_ids[train_bars == spb]
        means = position_means(ref, same if len(same) else train_ids, int(spb))
        base_v[rows] = means[(windows.start[rows, None] + np.arange(1, L)[None]) % spb]      # [n, L-1, D]
        for i in range(0, len(rows), batch_size):
            sl = rows[i:i + batch_size]
            cond = None if cond_of is None else cond_of(windows.song[sl])
            preds = model(torch.as_tensor(windows.steps[sl], dtype=torch.float32),
                          mask=torch.as_tensor(windows.mask[sl]), start=torch.as_tensor(windows.start[sl]),
                          steps_per_bar=int(spb), velocity=torch.as_tensor(vel[sl] * VELOCITY_SCALE),
                          offset=torch.as_tensor(off[sl] * OFFSET_UNITS),
                          cond=None if cond is None else torch.as_tensor(cond))
            pred_v[sl], pred_o[sl] = (p.numpy() for p in preds[3][:2])
    true_v, true_o = vel[:, 1:][hit], off[:, 1:][hit]
    return {"hits": int(hit.sum()),
            "model": _scores(pred_v[hit], pred_o[hit], true_v, true_o),
            "baseline": _scores(base_v[hit], np.zeros_like(true_o), true_v, true_o)}
