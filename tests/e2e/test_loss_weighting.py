"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Uncertainty weighting (Kendall et al. 2018): formula, optimum, and no collapse of any weight.
The rest is tests/unit/test_loss_weighting.py."""
import math

import pytest
import torch

from train.training.loss_weighting import UncertaintyWeighting


def test_weights_stay_finite_and_nonzero_while_training():
    """Jointly train a toy model whose terms differ by 1e6 in scale, one of which can reach 0 and one
    that goes negative (a raw −reward): every weight stays inside [exp(−s_max), exp(s_max)]."""
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(4))
    uw = UncertaintyWeighting(["huge", "tiny", "exact", "neg_reward"], max_log_var=5.0)
    opt = torch.optim.Adam([x, *uw.parameters()], lr=0.05)
    first = None
    for _ in range(3000):
        terms = {
            "huge": 1e3 * (x[0] - 1.0) ** 2 + 1e3,
            "tiny": 1e-3 * (x[1] + 2.0) ** 2 + 1e-3,
            "exact": (x[2] - 0.5) ** 2,            # can be driven to exactly 0
            "neg_reward": -torch.sigmoid(x[3]),    # negative: would send an unbounded s to −∞
        }
        loss = uw(terms)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = torch.tensor(list(uw.weights().values()))
    assert torch.isfinite(w).all()
    assert (w >= math.exp(-5.0) * 0.999).all() and (w <= math.exp(5.0) * 1.001).all()
    assert (w > 0).all()
    # The weights adapted to the scales: the 1e3-scale term is down-weighted below the 1e-3 one.
    assert uw.weights()["huge"] < 1e-2 < 1e2 < uw.weights()["tiny"]
    # ...and the model still learned every term.
    assert x[0].item() == pytest.approx(1.0, abs=0.05)
    assert x[1].item() == pytest.approx(-2.0, abs=0.05)
    assert x[2].item() == pytest.approx(0.5, abs=0.05)
