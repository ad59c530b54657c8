"""Learned weights for the terms of a multi-term loss (uncertainty weighting, off by default).

Kendall, Gal & Cipolla (2018), "Multi-task learning using uncertainty to weigh losses":
each term L_i gets a learned log-variance s_i and

    loss = Σ_i exp(−s_i) · L_i + s_i

The + s_i penalty is what stops the collapse a plain learned weight w_i · L_i suffers (w_i → 0):
for a fixed L_i > 0 the optimum is s_i = log L_i, so the weight exp(−s_i) = 1 / L_i stays finite
and positive. Two cases would still send s_i to ±∞: a term that reaches exactly 0 (weight → ∞) and
a negative term such as −reward (d loss / d s_i = 1 − exp(−s_i)·L_i > 0 for every s_i, so s_i → −∞).
So s_i is bounded smoothly, s_i = s_max · tanh(u_i / s_max), which keeps every weight inside
[exp(−s_max), exp(s_max)] whatever the terms do; feed it non-negative terms (a distance to a target
rather than a raw reward) for the weights to mean something.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """Combine named loss terms with learned weights exp(−s_i); see the module docstring.

    Add its parameters to the optimizer (no weight decay: decay would pull every s_i to 0,
    i.e. every weight to 1). `weights()` returns the current exp(−s_i) for logging.
    """

    def __init__(self, names: Iterable[str], init_log_var: float | Sequence[float] = 0.0,
                 max_log_var: float = 5.0):
        """`init_log_var`: one starting s for every term, or one per term (in `names` order)."""
        super().__init__()
        self.names = list(names)
        if not self.names:
            raise ValueError("UncertaintyWeighting needs at least one loss term name")
        if max_log_var <= 0:
            raise ValueError(f"max_log_var must be > 0, got {max_log_var}")
        init = ([float(init_log_var)] * len(self.names) if isinstance(init_log_var, (int, float))
                else [float(v) for v in init_log_var])
        if len(init) != len(self.names):
            raise ValueError(f"init_log_var has {len(init)} values for {len(self.names)} terms {self.names}")
        for name, s0 in zip(self.names, init):
            if abs(s0) >= max_log_var:
                raise ValueError(f"init_log_var {s0} of term {name!r} must lie inside (−{max_log_var}, {max_log_var})")
        self.max_log_var = float(max_log_var)
        # u is the free parameter; s = s_max·tanh(u/s_max) starts at init_log_var.
        u0 = self.max_log_var * torch.atanh(torch.tensor(init, dtype=torch.float32) / self.max_log_var)
        self.raw = nn.Parameter(u0)

    def log_vars(self) -> torch.Tensor:
        """s_i, bounded to (−max_log_var, max_log_var)."""
        return self.max_log_var * torch.tanh(self.raw / self.max_log_var)

    def weights(self) -> dict[str, float]:
        """The current weight exp(−s_i) of every term."""
        w = torch.exp(-self.log_vars().detach())
        return {name: float(v) for name, v in zip(self.names, w)}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ_i exp(−s_i)·L_i + s_i over the configured names (every name must be present)."""
        missing = [n for n in self.names if n not in losses]
        if missing:
            raise KeyError(f"UncertaintyWeighting: loss terms {missing} missing (got {sorted(losses)})")
        s = self.log_vars()
        terms = torch.stack([losses[n].float().reshape(()) for n in self.names])
        return (torch.exp(-s) * terms + s).sum()
