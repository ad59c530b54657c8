"""Stronger velocity and timing baselines for the teacher-forced expressive scores.

The baseline in train.evaluate.velocity_offset_scores (train mean velocity per drum and position, every hit on
the grid) is weak on timing: a drummer's offsets have a mean per drum and position too (a laid-back
snare, pushed hats), and a song keeps its own dynamics and feel. Two baselines, on the same cells:

    position_means:   the train split's mean velocity AND mean offset per drum and bar position
                      (train songs of the window's meter; the drum's mean where a position has no
                      hit; 64 / 0 where the drum never plays);
    running_residual: position_means plus the song's causal running residual: the mean of (true -
                      position mean) over the song's earlier hits of that drum (steps before the
                      predicted one, the window's context and the song before it), else over its
                      earlier hits of every drum, else 0. Teacher forced like the model with
                      expressive_history, which also reads the true values of earlier steps.

`strongest_baseline` names, per quantity, the baseline with the lowest MSE, and the model's
improvement is reported against that one (1 - model MSE / strongest MSE).
"""
from __future__ import annotations

import numpy as np

from pipeline.store import Store
from train.model.expressive import OFFSET_UNITS, VELOCITY_SCALE


def position_stat_means(store: Store, ids: np.ndarray, steps_per_bar: int, name: str, scale: float,
                        empty: float) -> np.ndarray:
    """[steps_per_bar, D] mean of `name` / scale over the hits at each bar position, per drum."""
    D = store.num_drums
    total, count = np.zeros((steps_per_bar, D)), np.zeros((steps_per_bar, D))
    for i in ids:
        sl = store.song_slice(int(i))
        hit = np.asarray(store.hits[sl]) > 0
        v = np.asarray(store.root[name][sl], np.float64) / scale
        pos = np.arange(len(v)) % steps_per_bar
        np.add.at(total, pos, v * hit)
        np.add.at(count, pos, hit)
    drum = np.divide(total.sum(0), count.sum(0), out=np.full(D, empty), where=count.sum(0) > 0)
    return np.where(count > 0, total / np.maximum(count, 1), drum[None])


def causal_running_mean(residual: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """[T, D]: at each step, the mean residual over the hits of the same drum at earlier steps,
    else over every drum's earlier hits, else 0."""
    r = np.where(hit, residual, 0.0)
    s_d = np.cumsum(r, 0) - r                      # exclusive: steps before this one
    n_d = np.cumsum(hit, 0) - hit
    s_all = np.cumsum(r.sum(1)) - r.sum(1)
    n_all = np.cumsum(hit.sum(1)) - hit.sum(1)
    every = np.divide(s_all, n_all, out=np.zeros(len(r)), where=n_all > 0)[:, None]
    return np.where(n_d > 0, s_d / np.maximum(n_d, 1), every)


def _song_predictions(store: Store, song: int, means: dict, spb: int) -> dict:
    """Per quantity: (position mean, position mean + running residual) [T, D] over the whole song."""
    sl = store.song_slice(song)
    hit = np.asarray(store.hits[sl]) > 0
    out = {}
    for q, (name, scale) in {"velocity": ("velocity", VELOCITY_SCALE), "offset": ("offset", OFFSET_UNITS)}.items():
        true = np.asarray(store.root[name][sl], np.float64) / scale
        base = means[q][np.arange(len(true)) % spb]
        out[q] = (base, base + causal_running_mean(true - base, hit))
    return out


def stronger_baselines(store: Store, windows, ref: Store, train_ids: np.ndarray, scores: dict) -> dict:
    """{"position_means": {...}, "running_residual": {...}, "strongest": {quantity: row},
    "model_improvement": {quantity: 1 - model MSE / strongest MSE}} on the cells
    train.evaluate.velocity_offset_scores scores (true hits of steps 1..L-1 of the scored windows); `scores`:
    its result ({"model", "baseline"}), the baseline row taking part in "strongest"."""
    from train.evaluate.velocity_offset_scores import _scores, played_windows

    L, D = windows.steps.shape[1], windows.steps.shape[2]
    vel, off = played_windows(store, windows.song, windows.start, L)
    hit = (windows.steps[:, 1:] > 0) & windows.scored[:, :-1, None]
    preds = {k: np.zeros((len(windows), L - 1, D)) for k in ("pv", "po", "rv", "ro")}
    train_bars = ref.meta["steps_per_bar"][train_ids]
    for spb in np.unique(windows.steps_per_bar):
        same = train_ids[train_bars == spb]
        ids = same if len(same) else train_ids
        means = {"velocity": position_stat_means(ref, ids, int(spb), "velocity", VELOCITY_SCALE, 64 / VELOCITY_SCALE),
                 "offset": position_stat_means(ref, ids, int(spb), "offset", OFFSET_UNITS, 0.0)}
        rows = np.flatnonzero(windows.steps_per_bar == spb)
        for song in np.unique(windows.song[rows]):
            p = _song_predictions(store, int(song), means, int(spb))
            T = len(p["velocity"][0])
            for w in rows[windows.song[rows] == song]:
                t = windows.start[w] + np.arange(1, L)
                ok = t < T
                for key, (q, k) in {"pv": ("velocity", 0), "po": ("offset", 0), "rv": ("velocity", 1),
                                    "ro": ("offset", 1)}.items():
                    preds[key][w, ok] = p[q][k][t[ok]]
    true_v, true_o = vel[:, 1:][hit], off[:, 1:][hit]
    rows_out = {"position_means": _scores(preds["pv"][hit], preds["po"][hit], true_v, true_o),
                "running_residual": _scores(preds["rv"][hit], preds["ro"][hit], true_v, true_o)}
    candidates = {"baseline": scores["baseline"], **rows_out}
    strongest, improvement = {}, {}
    for q in ("velocity", "offset"):
        key = f"{q}_mse"
        best = min(candidates, key=lambda r: candidates[r][key])
        strongest[q] = best
        mse = candidates[best][key]
        improvement[q] = 1.0 - scores["model"][key] / mse if mse > 0 else None
    return {**rows_out, "strongest": strongest, "model_improvement": improvement}


def strongest_markdown(e: dict) -> list[str]:
    """The report's line under the velocity and timing table: the model against the strongest baseline."""
    if "strongest" not in e:
        return []
    return ["", "position_means: the train mean velocity and offset per drum and position; running_residual: plus "
            "the song's running mean residual over its earlier hits. The model's improvement (1 − its MSE / the "
            "strongest baseline's): " + ", ".join(f"{q} {v:+.1%} against {e['strongest'][q]}"
                                                  for q, v in e["model_improvement"].items() if v is not None) + "."]
