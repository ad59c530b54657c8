"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Conditioning on style, beat/fill and tempo: labels through export -> dataset -> model -> checkpoint.
The rest is tests/unit/test_conditioning.py."""
import subprocess
import sys


from common.config import REPO_ROOT
from train.training.checkpoint import load_model
from tests.unit.test_conditioning import VOCAB, _overrides, data_dir, run_dir  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_trainer_stores_the_vocabulary_and_generate_conditions(run_dir, data_dir, tmp_path):
    model, ckpt = load_model(run_dir / "checkpoints" / "last.pt")
    assert model.config["conditioning"] == {"style": ["funk", "rock"], "beat_type": ["beat", "fill"],
                                            "bpm": VOCAB["bpm"]}
    assert model.config["cond_dropout"] == 0.2 and set(model.conditions) == {"style", "beat_type", "bpm"}
    args = [sys.executable, "-m", "train.generate", *_overrides(data_dir), f"checkpoint={run_dir}/checkpoints",
            f"hydra.run.dir={tmp_path}/h", f"generate.out_dir={tmp_path}/gen", "generate.plots=false",
            "generate.num_samples=2", "generate.bars=2"]
    ok = subprocess.run(args + ["generate.style=funk", "generate.beat_type=fill", "generate.bpm=100"],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "gen").glob("sample_*.mid"))) == 2
    bad = subprocess.run(args + ["generate.style=polka"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "polka" in bad.stderr and "known: funk, rock" in bad.stderr, bad.stderr


def test_style_classifier_refuses_an_unconditioned_checkpoint(data_dir, tmp_path):
    from tests.tiny_checkpoint import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "plain.pt", data_dir / "store.zarr", train_steps=1)
    proc = subprocess.run([sys.executable, "-m", "train.evaluate.style_classifier", *_overrides(data_dir),
                           f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}/h", f"style_classifier.out={tmp_path}/o.json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not conditioned on style" in proc.stderr, proc.stderr
