"""Uncertainty weighting (Kendall et al. 2018): formula, optimum, and no collapse of any weight."""

import math

import pytest
import torch

from train.training.loss_weighting import UncertaintyWeighting

def test_formula_at_init_and_known_log_vars():
    uw = UncertaintyWeighting(["a", "b"], init_log_var=0.0)
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert uw(losses).item() == pytest.approx(5.0)  # exp(0)·L + 0 summed
    with torch.no_grad():
        uw.raw.copy_(torch.tensor([1.0, -0.5]))
    s = uw.log_vars().detach()
    expected = math.exp(-s[0]) * 2.0 + s[0] + math.exp(-s[1]) * 3.0 + s[1]
    assert uw(losses).item() == pytest.approx(float(expected), rel=1e-6)
    assert uw.weights()["a"] == pytest.approx(math.exp(-float(s[0])))

def test_learned_log_variance_reaches_log_of_a_fixed_loss():
    # For a fixed L > 0 the optimum of exp(-s)·L + s is s = log L, i.e. weight 1/L.
    uw = UncertaintyWeighting(["small", "big"])
    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    losses = {"small": torch.tensor(0.1), "big": torch.tensor(20.0)}
    for _ in range(2000):
        opt.zero_grad()
        uw(losses).backward()
        opt.step()
    w = uw.weights()
    assert w["small"] == pytest.approx(10.0, rel=0.02)
    assert w["big"] == pytest.approx(0.05, rel=0.02)

def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="at least one"):
        UncertaintyWeighting([])
    with pytest.raises(ValueError, match="init_log_var"):
        UncertaintyWeighting(["a"], init_log_var=6.0, max_log_var=5.0)
    with pytest.raises(KeyError, match="missing"):
        UncertaintyWeighting(["a", "b"])({"a": torch.tensor(1.0)})
