"""Velocity and microtiming heads: how each hit of a step is played, given that it is hit.

Hits first, then velocity and offset given them (GrooVAE's factorisation: hit, velocity and
offset per drum and step; Gillick et al. 2019). The heads read the step model's state that
predicts step t+1 (`features`, [B, L, H]) and the hits of step t+1 ([B, L, D]: the true ones in
training, the sampled ones in generation) and give per drum

    velocity in (0, 1)      = MIDI velocity / 127                      (sigmoid)
    offset   in (-0.5, 0.5) = timing in steps (OFFSET_UNITS per step)  (tanh / 2)

Losses are mean squared errors on hit cells only (a rest has no velocity or timing), weighted by
`trainer.loss_weights.velocity` / `.offset`. Metric scale: velocity MSE in (velocity / 127)^2,
offset MSE in steps^2.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

VELOCITY_SCALE = 127.0
OFFSET_UNITS = 128          # offset units per step, as in the store (pipeline.midi.OFFSET_UNITS)
TERMS = ("velocity", "offset")


class ExpressiveHeads(nn.Module):
    """One small MLP over [state, hits of the step] -> (velocity, offset) per drum."""

    def __init__(self, hidden_dim: int, num_drums: int, dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden_dim + num_drums), nn.Linear(hidden_dim + num_drums, dim),
                                 nn.GELU(), nn.Linear(dim, 2 * num_drums))

    def forward(self, features: Tensor, hits: Tensor) -> tuple[Tensor, Tensor]:
        vel, off = self.net(torch.cat([features, hits.to(features.dtype)], -1)).chunk(2, -1)
        return torch.sigmoid(vel), 0.5 * torch.tanh(off)


def targets(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(velocity / 127, offset in steps, hit cells) of steps 1..L-1, aligned with features[:, :-1]."""
    hit = batch["step"][:, 1:] > 0
    if batch.get("mask") is not None:
        hit = hit & batch["mask"][:, 1:, None].bool()
    vel = batch["velocity"][:, 1:].float() / VELOCITY_SCALE
    off = batch["offset"][:, 1:].float() / OFFSET_UNITS
    return vel, off, hit


def _masked_mse(pred: Tensor, want: Tensor, cells: Tensor) -> Tensor:
    cells = cells.to(pred.dtype)
    return ((pred - want) ** 2 * cells).sum() / cells.sum().clamp(min=1)


DEFAULT_WEIGHTS = {"velocity": 1.0, "offset": 1.0}


def expressive_terms(preds: tuple[Tensor, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{"velocity", "offset"}: MSE of the teacher-forced predictions on the true-hit cells."""
    vel_t, off_t, hit = targets(batch)
    vel, off = preds
    return {"velocity": _masked_mse(vel, vel_t, hit), "offset": _masked_mse(off, off_t, hit)}


def add_expressive_loss(total: Tensor, terms: dict, preds: tuple[Tensor, Tensor], batch: Mapping[str, Tensor],
                        weights: Mapping[str, float] | None) -> tuple[Tensor, dict]:
    """total + Σ weights[k] · term_k over velocity and offset (missing weights: DEFAULT_WEIGHTS)."""
    weights = {**DEFAULT_WEIGHTS, **{k: v for k, v in dict(weights or {}).items() if k in TERMS}}
    extra = expressive_terms(preds, batch)
    total = total + sum(float(weights[k]) * extra[k] for k in TERMS)
    return total, {**terms, **{k: v.detach() for k, v in extra.items()}}


def to_midi_values(hits: np.ndarray, velocity: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head outputs -> (velocity uint8 1..127, offset int8 -64..64 in 1/128 step), 0 where no hit."""
    hit = np.asarray(hits) > 0
    vel = np.clip(np.rint(np.asarray(velocity, np.float64) * VELOCITY_SCALE), 1, 127)
    off = np.clip(np.rint(np.asarray(offset, np.float64) * OFFSET_UNITS), -(OFFSET_UNITS // 2), OFFSET_UNITS // 2)
    return np.where(hit, vel, 0).astype(np.uint8), np.where(hit, off, 0).astype(np.int8)
