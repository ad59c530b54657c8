"""The Optuna study driver on the real trainer and a tiny real store (store -> metrics -> export).

Every trial is a real `train.training.trainer.fit` run (tiny model, 2 epochs of a few batches, deterministic
CPU); studies live in SQLite files under tmp_path; the CLI tests run `python -m train.tune` as
separate processes, as a user would.
"""


import optuna
import pytest

from train.tune import study as tune
from train.tune.space import param_overrides

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

def _overrides(tiny, study_dir, *extra):
    return [*tiny, "tune=small", f"tune.dir={study_dir}", *extra]

def test_objective_can_add_the_generated_vs_validation_metric_distance(tiny, tmp_path):
    study = tune.run_study(_overrides(tiny, tmp_path / "s", "tune.n_trials=1", "tune.objective.generated.weight=0.5"))
    t = study.trials[0]
    distance = t.user_attrs["generated_distance"]
    assert 0.0 < distance <= 1.0
    assert t.user_attrs["best_epoch_value"] == min(t.intermediate_values.values())
    assert t.value == pytest.approx(t.user_attrs["best_epoch_value"] + 0.5 * distance, rel=1e-12)

def test_bad_search_space_is_named_before_any_trial(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"tune.space.oops: config path 'trainer.no_such_key'"):
        tune.run_study(_overrides(tiny, tmp_path / "s", "+tune.space.oops={path: trainer.no_such_key, type: int, low: 1, high: 2}"))
    with pytest.raises(ValueError, match="type must be float, int or categorical"):
        tune.run_study(_overrides(tiny, tmp_path / "s", "tune.space.lr.type=uniform"))

def test_override_formatting_round_trips_through_hydra():
    from common.config import compose

    cfg = compose(param_overrides(
        {"lr": {"path": "trainer.optimizer.config.lr"}, "h": {"path": ["model.step_hidden_dim", "model.bar_hidden_dim"]},
         "b": {"path": "model"}, "n": {"path": "rl.normalize"}},
        {"lr": 1.2345678901234567e-05, "h": 96, "b": "lstm", "n": False}))
    assert cfg.trainer.optimizer.config.lr == 1.2345678901234567e-05
    assert cfg.model.step_hidden_dim == cfg.model.bar_hidden_dim == 96
    assert cfg.model.rnn_type == "lstm" and cfg.rl.normalize is False

def test_reward_normalisation_modes_are_reachable_from_the_search():
    import torch

    from common.config import compose
    from train.training.rewards import RewardShaper

    space = {"reward_norm": {"path": "rl.normalize", "type": "categorical", "choices": ["batch", "running", "none"]}}
    reward = torch.tensor([1.0, 3.0])
    advs, shapers = {}, {}
    for mode in ("batch", "running", "none"):
        cfg = compose(param_overrides(space, {"reward_norm": mode}) + ["rl=reinforce"])
        shapers[mode] = RewardShaper(cfg.rl, cfg.window)
        assert shapers[mode].normalize == mode
        advs[mode] = shapers[mode].advantage(reward, baseline=1.0)
    assert advs["none"].tolist() == [0.0, 2.0]
    assert advs["batch"].tolist() == pytest.approx([0.0, 2.0])  # ÷ std of [1, 3] = 1
    assert advs["running"].tolist() == pytest.approx([0.0, 2.0 / 2 ** 0.5])  # ÷ √mean((R − b)²) = √2
    # running: an exponential moving average across batches, with rl.baseline_momentum
    shaper = shapers["running"]
    m = shaper.momentum
    shaper.advantage(torch.tensor([5.0, 5.0]), baseline=1.0)
    assert shaper.var == pytest.approx(m * 2.0 + (1 - m) * 16.0)
    # the older boolean spelling still works; a wrong value is named before training
    from common.config import ConfigError
    from train.training.rewards import normalize_mode

    assert (normalize_mode(True), normalize_mode(False)) == ("batch", "none")
    with pytest.raises(ConfigError, match="rl.normalize='sometimes'"):
        normalize_mode("sometimes")
