"""Velocity and microtiming heads: how each hit of a step is played, given that it is hit.

Hits first, then velocity and offset given them (GrooVAE's factorisation: hit, velocity and
offset per drum and step; Gillick et al. 2019). The heads read the step model's state that
predicts step t+1 (`features`, [B, L, H]) and the hits of step t+1 ([B, L, D]: the true ones in
training, the sampled ones in generation) and give per drum

    velocity in (0, 1)      = MIDI velocity / 127                      (sigmoid)
    offset   in (-0.5, 0.5) = timing in steps (OFFSET_UNITS per step)  (tanh / 2)

With `history` (`model.expressive_history`) the heads also read how the steps so far were played:
a GRU over [hits, velocity / 127, offset] of steps 0..t (`played_input`) whose state joins the
features of step t+1. A drummer's dynamics and feel are carried across steps (a loud song stays
loud): on Groove validation a causal running mean of the song's past velocity residuals alone is
24% below the per-drum-and-position mean (docs/changelog.md, 2026-11-30, velocity and timing), information the hit
features never see. Training is teacher forced (the true past values); generation and humanize
feed back what the heads played, and a prime's own velocities and offsets.

Losses are mean squared errors on hit cells only (a rest has no velocity or timing), weighted by
`trainer.loss_weights.velocity` / `.offset`. Metric scale: velocity MSE in (velocity / 127)^2,
offset MSE in steps^2.

With `spread` (`model.expressive_spread`) a second MLP gives each cell's standard deviation
around those means, fitted by the Gaussian negative log-likelihood of the residual,
log σ + (x − μ)² / 2σ² on hit cells (`trainer.loss_weights.spread`), on detached inputs and means:
it learns how unsure the means are and changes nothing else the model learns. Generation draws
μ + τ·σ·ε (τ = `expressive_temperature`): a head that plays only its means is quieter, flatter and
straighter than a drummer (Groove validation: timing spread 0.085 of a step against 0.176 real).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

VELOCITY_SCALE = 127.0
OFFSET_UNITS = 128          # offset units per step, as in the store (pipeline.midi.OFFSET_UNITS)
TERMS = ("velocity", "offset", "spread")
LOG_SD_RANGE = (-7.0, 0.0)  # σ between 1e-3 and 1 (velocity / 127, offset in steps): keeps the NLL finite


class ExpressiveHeads(nn.Module):
    """One small MLP over [state, hits of the step (, played history)] -> (velocity, offset) per drum."""

    def __init__(self, hidden_dim: int, num_drums: int, dim: int = 64, history: bool = False,
                 spread: bool = False):
        super().__init__()
        self.dim = dim
        # its own module: a checkpoint without history keeps its keys
        self.history = nn.GRU(3 * num_drums, dim, batch_first=True) if history else None
        width = hidden_dim + num_drums + (dim if history else 0)
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, 2 * num_drums))
        # created last, so a model without it initialises every other weight as before
        self.spread = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim), nn.GELU(),
                                    nn.Linear(dim, 2 * num_drums)) if spread else None
        if spread:   # start near σ = 0.1 (13 velocity steps, a tenth of a step), not e^0 = 1: the full range
            nn.init.constant_(self.spread[-1].bias, float(np.log(0.1)))

    def forward(self, features: Tensor, hits: Tensor, past: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`past`: `read`'s output at the step before (required with history, ignored without)."""
        vel, off = self.net(self._input(features, hits, past)).chunk(2, -1)
        return torch.sigmoid(vel), 0.5 * torch.tanh(off)

    def _input(self, features: Tensor, hits: Tensor, past: Tensor | None) -> Tensor:
        return torch.cat([features, hits.to(features.dtype)] + ([past] if self.history is not None else []), -1)

    def scale(self, features: Tensor, hits: Tensor, past: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(σ of velocity / 127, σ of offset in steps) per cell, read from detached inputs (a model
        with `spread`): fitting it moves none of the weights behind the means."""
        x = self._input(features, hits, past).detach()
        log_sd = self.spread(x).clamp(*LOG_SD_RANGE)
        return tuple(log_sd.exp().chunk(2, -1))

    def sample(self, features: Tensor, hits: Tensor, past: Tensor | None, gen: torch.Generator,
               temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """A draw μ + τ·σ·ε of (velocity, offset) per cell, clipped to the heads' ranges; the means
        when τ = 0 or the heads have no spread."""
        vel, off = self.forward(features, hits, past)
        if self.spread is None or not temperature:
            return vel, off
        sd_v, sd_o = self.scale(features, hits, past)
        eps = torch.randn((2, *vel.shape), generator=gen, device=vel.device, dtype=vel.dtype)
        vel = (vel + temperature * sd_v * eps[0]).clamp(1.0 / VELOCITY_SCALE, 1.0)
        off = (off + temperature * sd_o * eps[1]).clamp(-0.5, 0.5)
        return vel, off

    def read(self, played: Tensor) -> Tensor:
        """History state [B, L, dim] after each step of `played` [B, L, 3D] (`played_input`)."""
        return self.history(played)[0] if played.shape[1] else played.new_zeros(*played.shape[:2], self.dim)

    def read_step(self, played: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One step of `read`: played [B, 3D] -> (history state [B, dim], carried GRU state)."""
        y, state = self.history(played[:, None], state)
        return y[:, 0], state


def played_input(hits: Tensor, velocity: Tensor | None, offset: Tensor | None, scaled: bool = False) -> Tensor:
    """[..., 3D]: hits (0/1), velocity / 127 and offset in steps of each cell, 0 on rests; the
    history's input. `velocity`/`offset` in store units (uint8 MIDI velocity, int8 1/128 step), or
    with `scaled` already in the heads' units; None reads as 0 (not played: a hits-only input)."""
    hit = (hits > 0).to(torch.float32)
    vel = hit * 0 if velocity is None else velocity.to(hit.dtype) / (1.0 if scaled else VELOCITY_SCALE)
    off = hit * 0 if offset is None else offset.to(hit.dtype) / (1.0 if scaled else OFFSET_UNITS)
    return torch.cat([hit, vel * hit, off * hit], -1)


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


DEFAULT_WEIGHTS = {"velocity": 1.0, "offset": 1.0, "spread": 0.1}


def _masked_gaussian_nll(mean: Tensor, sd: Tensor, want: Tensor, cells: Tensor) -> Tensor:
    """Mean of log σ + (x − μ)² / 2σ² over `cells`, with μ detached (the spread fits the residual)."""
    cells = cells.to(sd.dtype)
    nll = torch.log(sd) + (want - mean.detach()) ** 2 / (2 * sd ** 2)
    return (nll * cells).sum() / cells.sum().clamp(min=1)


def expressive_terms(preds: tuple[Tensor, ...], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{"velocity", "offset"}: MSE of the teacher-forced predictions on the true-hit cells; with a
    spread (preds = (vel, off, σ_vel, σ_off)) also "spread": the Gaussian NLL of both residuals."""
    vel_t, off_t, hit = targets(batch)
    vel, off = preds[:2]
    out = {"velocity": _masked_mse(vel, vel_t, hit), "offset": _masked_mse(off, off_t, hit)}
    if len(preds) > 2:
        out["spread"] = _masked_gaussian_nll(vel, preds[2], vel_t, hit) + _masked_gaussian_nll(off, preds[3], off_t, hit)
    return out


def add_expressive_loss(total: Tensor, terms: dict, preds: tuple[Tensor, Tensor], batch: Mapping[str, Tensor],
                        weights: Mapping[str, float] | None) -> tuple[Tensor, dict]:
    """total + Σ weights[k] · term_k over velocity and offset (missing weights: DEFAULT_WEIGHTS)."""
    weights = {**DEFAULT_WEIGHTS, **{k: v for k, v in dict(weights or {}).items() if k in TERMS}}
    extra = expressive_terms(preds, batch)
    total = total + sum(float(weights[k]) * extra[k] for k in TERMS if k in extra)
    return total, {**terms, **{k: v.detach() for k, v in extra.items()}}


def to_midi_values(hits: np.ndarray, velocity: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head outputs -> (velocity uint8 1..127, offset int8 -64..64 in 1/128 step), 0 where no hit."""
    hit = np.asarray(hits) > 0
    vel = np.clip(np.rint(np.asarray(velocity, np.float64) * VELOCITY_SCALE), 1, 127)
    off = np.clip(np.rint(np.asarray(offset, np.float64) * OFFSET_UNITS), -(OFFSET_UNITS // 2), OFFSET_UNITS // 2)
    return np.where(hit, vel, 0).astype(np.uint8), np.where(hit, off, 0).astype(np.int8)
