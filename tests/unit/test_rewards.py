"""Reward shaping: expected metrics, gradients, user terms; and end-to-end, that it moves density."""

import pytest
import torch
from omegaconf import OmegaConf

from common.config import compose
from train.training import rewards
from common.config import ConfigError

def test_expected_metrics_match_exact_values_on_binary_rolls():
    torch.manual_seed(0)
    roll = (torch.rand(3, 64, 4) < 0.3).float()
    mask = torch.ones(3, 64)
    # avg hits
    assert torch.allclose(rewards.expected_avg_hits(roll, mask), roll.sum((1, 2)) / 64)
    # syncopation with absolute steps
    steps = torch.arange(64).expand(3, 64)
    off = rewards.offbeat_mask(steps, 16, 4)
    exp_sync = (roll.sum(-1) * off).sum(1) / roll.sum((1, 2))
    assert torch.allclose(rewards.expected_syncopation(roll, mask, steps, 16, 4), exp_sync, atol=1e-5)
    # IOI variance: with 0/1 "probabilities" the expectation is the exact population variance
    want = []
    for b in range(3):
        per_drum = []
        for dr in range(4):
            on = torch.nonzero(roll[b, :, dr]).flatten()
            iv = (on[1:] - on[:-1]).float()
            per_drum.append(iv.var(unbiased=False) if len(iv) else torch.tensor(0.0))
        want.append(torch.stack(per_drum).mean())
    got = rewards.expected_ioi_var(roll, mask, max_gap=64)
    assert torch.allclose(got, torch.stack(want), atol=1e-3)

def test_surrogate_reward_gradient_pushes_density_toward_target():
    cfg = compose(["rl=surrogate", "rl.terms.density.target=3.0"])
    shaper = rewards.build(cfg.rl, cfg.window)
    logits = torch.zeros(2, 33, 4, requires_grad=True)
    loss, logs = shaper.surrogate(logits, {"mask": torch.ones(2, 33, dtype=torch.bool),
                                           "start": torch.zeros(2, dtype=torch.long)})
    loss.backward()
    assert logs["reward/density"] == pytest.approx(2.0)  # 4 drums × p=0.5
    assert (logits.grad[:, :-1] < 0).all()                # descending the loss raises every logit

def test_user_reward_function_by_import_path():
    cfg = compose(["rl=surrogate", "~rl.terms", "+rl.terms.kick.metric=tests.unit.test_rewards:kick_rate",
                   "+rl.terms.kick.target=null", "+rl.terms.kick.weight=1.0"])
    shaper = rewards.build(cfg.rl, cfg.window)
    logits = torch.zeros(1, 17, 4)
    loss, logs = shaper.surrogate(logits, {"mask": torch.ones(1, 17, dtype=torch.bool)})
    assert logs["reward/kick"] == pytest.approx(0.5) and float(loss) == pytest.approx(-0.5)
    with pytest.raises(ConfigError, match="no_such_module"):
        rewards.build(OmegaConf.merge(cfg.rl, {"terms": {"kick": {"metric": "no_such_module:f"}}}), cfg.window)

def test_reinforce_needs_a_prime_of_at_least_one_bar():
    cfg = compose(["rl=reinforce"])
    rewards.build(cfg.rl, cfg.window)   # the shipped config is valid
    for prime, sample in ((0, 32), (16, 0), (8, 32)):
        bad = OmegaConf.merge(cfg.rl, {"prime_steps": prime, "sample_steps": sample})
        with pytest.raises(ConfigError, match=f"rl.prime_steps={prime}, rl.sample_steps={sample}"):
            rewards.build(bad, cfg.window)

def kick_rate(roll, *, start, steps_per_bar, beats_per_bar):
    return roll[..., 0].mean(1)

def test_batches_carry_exactly_the_enabled_window_targets(tiny, tmp_path):
    """The trainer's batches hold the stored metrics enabled rl terms compare with, nothing else;
    a term whose metric the export lacks stops the run before training, naming the fix."""
    from train.training.distributed import Dist
    from train.training.build import build_data
    from train.training.trainer import fit

    off = compose(tiny)
    assert rewards.window_metrics_needed(off.rl) == []
    on = compose(tiny + ["rl=surrogate", "rl.terms.syncopation.weight=0.5", "model.expressive=false"])
    assert rewards.window_metrics_needed(on.rl) == ["avg_hits", "syncopation"]
    _, train, _ = build_data(on, Dist())
    batch = next(iter(train))
    assert set(batch["metrics"]) == {"avg_hits", "syncopation"} and "velocity" not in batch and "bar" not in batch
    bad = compose(tiny + ["rl=surrogate", "+rl.terms.kick.metric=tests.unit.test_rewards:kick_rate",
                          "+rl.terms.kick.target=window", f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"\['kick'\] were not exported.*export.metrics"):
        fit(bad)

def test_window_target_uses_each_windows_stored_metric():
    cfg = compose(["rl=surrogate"])                          # density target: window
    shaper = rewards.build(cfg.rl, cfg.window)
    logits = torch.zeros(2, 17, 4)                           # expected density 4 × 0.5 = 2
    batch = {"mask": torch.ones(2, 17, dtype=torch.bool), "metrics": {"avg_hits": torch.tensor([2.0, 3.0])}}
    _, logs = shaper.surrogate(logits, batch)
    assert logs["reward/density_r"] == pytest.approx(-0.5)   # mean of −|2−2| and −|2−3|

def test_reward_metrics_are_window_metrics_of_the_kernels():
    """Each builtin term names a stored window metric (its `window` target) that the kernels compute
    from the hits alone (reinforce scores samples with kernels.window_metrics by that name)."""
    import kernels

    assert set(rewards.REWARD_METRICS) <= set(kernels.WINDOW_METRICS)
    assert rewards.BUILTINS == tuple(rewards.REWARD_METRICS)
    assert [n for n, m in rewards.REWARD_METRICS.items() if m.real_target] == ["ioi_var"]
