"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Reward shaping: expected metrics, gradients, user terms; and end-to-end, that it moves density.
The rest is tests/unit/test_rewards.py."""
import pytest

from common.config import compose


def _train_and_generate(tiny, run_dir, extra):
    from train.training.checkpoint import load_model
    from train.training.trainer import fit

    summary = fit(compose(tiny + [f"trainer.run_dir={run_dir}", "trainer.resume=never",
                                  "trainer.limit_val_batches=1"] + extra))
    model, _ = load_model(run_dir / "checkpoints" / "last.pt")
    hits = model.generate(None, length=64, batch_size=16, seed=0)
    return float(hits.sum(-1).mean()), summary


@pytest.fixture(scope="module")
def baseline_density(tiny, tmp_path_factory):
    return _train_and_generate(tiny, tmp_path_factory.mktemp("base"), [])[0]


@pytest.mark.parametrize("mode", ["surrogate", "reinforce"])
def test_density_target_above_the_data_raises_generated_density(tiny, baseline_density, tmp_path, mode):
    # rl.weight 13: the step loss is in bits per step, ~13x the per-drum BCE this test was sized for
    extra = [f"rl={mode}", "rl.weight=13.0", "rl.terms.density.target=4.0"]
    if mode == "reinforce":
        extra += ["rl.prime_steps=32", "rl.sample_steps=32"]
    density, summary = _train_and_generate(tiny, tmp_path, extra)
    assert density > baseline_density + 0.3, (density, baseline_density)
    assert summary["global_step"] > 0
    # the reward terms were logged beside the losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"]
    assert {"reward/density", "reward/total", "train/rl", "train/step"} <= set(tags)
