"""rl.learn_weights: reward-term weights learned in the trainer (uncertainty weighting), end to end.

A real tiny run with the option on keeps every learned weight finite and inside its bounds while
moving it; the weights are logged (metrics.csv, TensorBoard), checkpointed (an exact resume from an
epoch checkpoint), and averaged across ranks (real torchrun: 2 processes == 1 process).
"""

import csv
import math

import pytest
import torch

from common.config import compose
from train.training.checkpoint import load_checkpoint
from common.config import ConfigError
from train.training.config_checks import validate_config
from train.training.trainer import fit

BOUND = 2.0

LEARNED = ["rl=surrogate", "rl.learn_weights=true", f"rl.max_log_var={BOUND}", "rl.weight=0.5",
           "rl.terms.syncopation.weight=0.5", "rl.terms.ioi_var.weight=2.0", "rl.max_gap=8"]

START = {"density": 1.0, "syncopation": 0.5, "ioi_var": 2.0}

COLUMNS = [f"reward/weight/{k}" for k in START]

@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """Two epochs of 4 steps with learned weights; epoch_1.pt is kept for the resume test."""
    root = tmp_path_factory.mktemp("learned")
    overrides = tiny + LEARNED + [f"trainer.run_dir={root}", "trainer.limit_train_batches=4",
                                  "trainer.save_every_n_epochs=1", "trainer.resume=never"]
    return root, overrides, fit(compose(overrides))

def _weights(ck) -> dict:
    s = BOUND * torch.tanh(ck["rewards"]["weighting"]["raw"] / BOUND)
    return dict(zip(START, torch.exp(-s).tolist()))

def test_learned_weights_stay_finite_in_bounds_and_move(run):
    root, _, summary = run
    last = load_checkpoint(root / "checkpoints" / "last.pt")
    w = _weights(last)
    for name, value in w.items():
        assert math.isfinite(value) and math.exp(-BOUND) < value < math.exp(BOUND), (name, value)
        assert abs(value - START[name]) > 1e-3, (name, value)   # learning moved every weight
        assert summary[f"reward/weight/{name}"] == pytest.approx(value, rel=1e-6)
    # trained by the model's optimizer in their own group, without weight decay
    groups = last["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] > 0
    # the epoch rows log every learned weight; the last row is the checkpoint's
    rows = list(csv.DictReader(open(root / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for name, col in zip(START, COLUMNS):
        assert float(rows[-1][col]) == pytest.approx(w[name], rel=1e-6)
        assert float(rows[0][col]) != float(rows[1][col])

def test_learned_weights_reach_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = run
    acc = EventAccumulator(str(root / "tb"))
    acc.Reload()
    for col in COLUMNS:
        values = [e.value for e in acc.Scalars(col)]
        assert len(values) == 4 and all(math.exp(-BOUND) < v < math.exp(BOUND) for v in values), col

def test_resume_restores_learned_weights_exactly(run, tmp_path):
    root, overrides, _ = run
    fit(compose(overrides + [f"trainer.run_dir={tmp_path}",
                             f"trainer.resume={root / 'checkpoints' / 'epoch_1.pt'}"]))
    a = load_checkpoint(root / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 8
    assert torch.equal(a["rewards"]["weighting"]["raw"], b["rewards"]["weighting"]["raw"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

def test_bad_learned_weight_configs_are_named(tiny):
    with pytest.raises(ConfigError, match="rl.terms.density.target=null"):
        validate_config(compose(tiny + LEARNED + ["rl.terms.density.target=null"]))
    with pytest.raises(ConfigError, match="rl.terms.ioi_var.weight=20.0"):
        validate_config(compose(tiny + LEARNED + ["rl.terms.ioi_var.weight=20.0"]))

def test_per_term_starting_weights():
    from train.training.loss_weighting import UncertaintyWeighting

    uw = UncertaintyWeighting(["a", "b"], init_log_var=[0.0, -math.log(0.5)], max_log_var=BOUND)
    assert uw.weights() == pytest.approx({"a": 1.0, "b": 0.5})
    with pytest.raises(ValueError, match="2 terms"):
        UncertaintyWeighting(["a", "b"], init_log_var=[0.0])
    with pytest.raises(ValueError, match="term 'b'"):
        UncertaintyWeighting(["a", "b"], init_log_var=[0.0, 3.0], max_log_var=BOUND)

def test_optuna_space_entry_from_the_docs_reaches_the_trainer(tiny):
    from train.tune.space import check_space, param_overrides

    space = {"learn_weights": {"path": "rl.learn_weights", "type": "categorical", "choices": [False, True]}}
    base = compose(tiny + ["rl=surrogate", "tune=rewards"])   # reward settings: the objective judging them
    check_space(base, space)
    cfg = compose(tiny + ["rl=surrogate", *param_overrides(space, {"learn_weights": True})])
    assert cfg.rl.learn_weights is True
    validate_config(cfg)

def test_reinforce_learns_the_weights_too(tiny, tmp_path):
    summary = fit(compose(tiny + ["rl=reinforce", "rl.learn_weights=true", f"rl.max_log_var={BOUND}",
                                  "rl.prime_steps=32", "rl.sample_steps=32", "rl.terms.syncopation.weight=0.5",
                                  f"trainer.run_dir={tmp_path}", "trainer.max_epochs=1",
                                  "trainer.limit_train_batches=4", "trainer.resume=never"]))
    for name, start in (("density", 1.0), ("syncopation", 0.5)):
        w = summary[f"reward/weight/{name}"]
        assert math.exp(-BOUND) < w < math.exp(BOUND) and abs(w - start) > 1e-3, (name, w)
