"""Sampling from a model, shared by generate, evaluate and the style classifier: `sample` (batches of
seeded draws, optionally with a prime, conditions and classifier-free guidance), `guidance_of`
(the configured guidance scale), `played_values` (MIDI velocity and offset of a sample),
`sample_hits` (per-drum Bernoullis) and `torch_threads` (the CPU threads to sample with)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from common.config import ConfigError
from train.model.expressive import to_midi_values
from train.model.heads import sample_bernoulli

log = logging.getLogger(__name__)


@torch.no_grad()
def sample(model, num_samples: int, length: int, *, num_drums: int, prime: np.ndarray | None = None,
           temperature: float = 1.0, top_p: float | None = None, seed: int = 0,
           batch_size: int = 64, top_k: int | None = None, expressive: bool = False,
           cond: list[int] | None = None, steps_per_bar: int | None = None,
           prime_played: tuple[np.ndarray, np.ndarray] | None = None, expressive_temperature: float = 1.0,
           guidance: float = 1.0):
    """[num_samples, T0 + length, D] uint8: the prime (or nothing) followed by `length` sampled steps.

    Batches of `batch_size` use seeds seed, seed + 1, …, so a run is reproducible for a seed.
    `expressive=True` (a model with expressive heads) returns (hits, velocity / 127, offset in
    steps) float arrays of the same shape, drawn around the heads' means with `expressive_temperature`
    (0: the means; model.generate); over the prime `prime_played` (velocity / 127, offset
    in steps [T0, D], read by the model's expressive history; None: 0). `cond`: condition ids of
    every sample (`condition_ids`; None: unconditional); `guidance` its classifier-free guidance
    scale (1: off; model.generate). `steps_per_bar`: the bar (meter) to
    generate in, default the model's.
    """
    t0 = 0 if prime is None else len(prime)
    out = []
    for b, first in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - first)
        start = torch.zeros(n, t0, num_drums)
        if t0:
            start[:] = torch.as_tensor(prime, dtype=torch.float32)
        played = None if prime_played is None or not t0 else \
            tuple(torch.as_tensor(np.asarray(p), dtype=torch.float32).expand(n, t0, num_drums) for p in prime_played)
        seq = model.generate(start, length, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed + b,
                             expressive=expressive, cond=None if cond is None else torch.tensor(cond),
                             steps_per_bar=steps_per_bar, prime_played=played,
                             expressive_temperature=expressive_temperature, guidance=guidance)
        out.append(seq if expressive else (seq,))
        log.info("generated %d/%d samples of %d steps", first + n, num_samples, length)
    if not out:
        return np.zeros((0, t0 + length, num_drums), np.uint8)
    hits, *played = (torch.cat(part).detach().cpu().numpy() for part in zip(*out))
    hits = (hits > 0).astype(np.uint8)
    return (hits, *played) if expressive else hits


def guidance_of(g: Mapping, cond: list[int] | None) -> float:
    """`generate.guidance` (style_classifier.guidance), checked (> 0). With no condition requested
    there is nothing to guide towards: unconditional sampling (1), said once in the log, so a
    recipe's guidance default does not stand in the way of unconditional generation."""
    scale = float(g.get("guidance", 1.0))
    if scale <= 0:
        raise ConfigError(f"guidance={scale}: the classifier-free guidance scale must be > 0 (1 = off)")
    if scale != 1.0 and (cond is None or not any(cond)):
        log.info("guidance=%s: no condition requested (style / beat_type / bpm), so none to guide towards: "
                 "sampling unconditionally", scale)
        return 1.0
    return scale


@contextmanager
def torch_threads(num_threads: int):
    """`num_threads` intra-op CPU threads inside (0: torch's default), the caller's count after.
    Step-by-step sampling of a small batch is many tiny ops: on two shared cores torch's second
    thread made the Groove checkpoint's 4 x 256 steps take 1.5-54 s instead of 0.28 s, its
    OpenMP worker spin-waiting for a busy core (benchmarks/README.md, start-up)."""
    if int(num_threads) < 0:
        raise ConfigError(f"generate.num_threads={num_threads}: must be >= 0 (0 = torch's default)")
    before = torch.get_num_threads()
    if int(num_threads) > 0:
        torch.set_num_threads(int(num_threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def played_values(hits: np.ndarray, vel: np.ndarray | None, off: np.ndarray | None, t0: int,
                  fixed_velocity: int, prime: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MIDI velocity (uint8) and offset (int8, 1/128 step) of one sample: the heads' values after
    the prime; over the prime its own `prime` (velocity, offset) when given, else its hits at
    `fixed_velocity` on the grid; without heads every hit at `fixed_velocity` on the grid."""
    if vel is None:
        return hits * np.uint8(fixed_velocity), np.zeros(hits.shape, np.int8)
    velocity, offset = to_midi_values(hits, vel, off)
    if prime is not None:
        velocity[:t0], offset[:t0] = prime[0][:t0], prime[1][:t0]
    else:
        velocity[:t0], offset[:t0] = hits[:t0] * np.uint8(fixed_velocity), 0
    return velocity, offset


def sample_hits(logits: Tensor, temperature: float = 1.0, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Per-drum Bernoulli sampling of independent logits (`heads.sample_bernoulli`): p = σ(logit / T),
    T ≤ 0 greedy; top_p per drum over its two outcomes. Decoding over the joint step event is
    `model.head.sample` (what `generate` uses)."""
    return sample_bernoulli(logits, temperature, generator, top_p)
