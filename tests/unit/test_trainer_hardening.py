"""The trainer's bookkeeping under failure: tiny real runs on real data."""

import argparse
import csv
import json

import optuna
import pytest
import torch

import train.training.build as build
import train.training.resume as resume
from common.config import compose
from tests.trainer_data import build_tiny_ready
from train.training.checkpoint import load_checkpoint, save_checkpoint
from common.config import ConfigError
from train.training.config_checks import validate_config
from train.training.trainer import fit

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_ready(tmp_path_factory.mktemp("ready"))

@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """Every third song 3 bars long: its one 64-step window is a quarter padding."""
    return build_tiny_ready(tmp_path_factory.mktemp("padded"), short_bars=3)

def _cfg(overrides, run_dir, *extra):
    return compose([*overrides, f"trainer.run_dir={run_dir}", *extra])

def _csv_epochs(run_dir):
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]

COMMIT = ["trainer.max_epochs=2", "trainer.save_top_k=1", "trainer.save_every_n_epochs=1"]

def _epoch2_writes(tiny, tmp_path, monkeypatch):
    """The files the epoch-2 save writes, in order, on an uninterrupted run."""
    written = []
    real = resume.save_checkpoint
    monkeypatch.setattr(resume, "save_checkpoint",
                        lambda path, ck: (written.append((ck["epoch"], path.name)), real(path, ck))[1])
    fit(_cfg(tiny, tmp_path / "whole", *COMMIT))
    monkeypatch.setattr(resume, "save_checkpoint", real)
    return [name for epoch, name in written if epoch == 2]

def test_a_kill_during_the_epoch_save_leaves_a_consistent_set(tiny, tmp_path, monkeypatch):
    names = _epoch2_writes(tiny, tmp_path, monkeypatch)
    assert {"last.pt", "best.pt"} <= set(names)                  # epoch 2 improved: best files moved
    real = resume.save_checkpoint
    for k in range(len(names)):                                  # SIGKILL before each write in turn
        run = tmp_path / f"killed_{k}"
        seen: list[str] = []   # the writes this run has made so far

        def dying(path, ck, k=k, seen=seen):
            if ck["epoch"] == 2:
                if len(seen) == k:
                    raise KeyboardInterrupt(f"killed before writing {path.name}")
                seen.append(path.name)
            return real(path, ck)

        monkeypatch.setattr(resume, "save_checkpoint", dying)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(tiny, run, *COMMIT))
        monkeypatch.setattr(resume, "save_checkpoint", real)
        ckpt_dir = run / "checkpoints"
        last = load_checkpoint(ckpt_dir / "last.pt")
        # everything last.pt refers to exists, and metrics.csv has every epoch it has finished
        assert all((ckpt_dir / name).is_file() for _, _, name in last["best"]["top"]), (k, last["best"])
        assert set(range(1, last["epoch"] + 1)) <= set(_csv_epochs(run)), k
        assert last["epoch"] == 1                                # the commit point was not reached
        fit(_cfg(tiny, run, *COMMIT))                           # resume: the set ends consistent
        last = load_checkpoint(ckpt_dir / "last.pt")
        assert last["epoch"] == 2 and _csv_epochs(run) == [1, 2]
        assert load_checkpoint(ckpt_dir / "best.pt")["epoch"] == last["best"]["epoch"] == 2
        assert sorted(p.name for p in ckpt_dir.glob("best_epoch_*")) == [last["best"]["top"][0][2]]

@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished")
    fit(_cfg(tiny, run, "trainer.max_epochs=1"))
    return run

def _foreign_pickle(path):
    torch.save({"args": argparse.Namespace(lr=1)}, path)      # a Python object: weights_only refuses it

@pytest.mark.parametrize("make, expect", [
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "truncated or not a torch file"),
    (_foreign_pickle, "Python objects beyond tensors"),
    (lambda p: torch.save({"model": {}}, p), "not a hierdrums training checkpoint"),
])
def test_bad_last_pt_is_one_line_naming_the_file(tiny, tmp_path, make, expect):
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    make(last)
    with pytest.raises(ConfigError) as err:
        fit(_cfg(tiny, tmp_path))
    msg = str(err.value)
    assert str(last) in msg and expect in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "trainer.resume=never" in msg

def test_checkpoint_from_before_horizon_bars_resumes_as_unbounded(tiny, finished, tmp_path):
    """A checkpoint saved before the key existed is the unbounded model (its loading default):
    resuming it needs model.horizon_bars=0, and the default (the window's bars) is named."""
    ck = load_checkpoint(finished / "checkpoints" / "last.pt")
    assert ck["model_config"].pop("horizon_bars") == 4                 # tiny windows: 64 steps, 4 bars
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", ck)
    with pytest.raises(ConfigError, match=r"\(in model\.horizon_bars\)"):
        fit(_cfg(tiny, tmp_path, "trainer.max_epochs=2"))
    assert fit(_cfg(tiny, tmp_path, "trainer.max_epochs=2", "model.horizon_bars=0"))["epochs"] == 2

def test_resume_warns_of_unapplied_optimizer_changes(tiny, tmp_path, capsys):
    fit(_cfg(tiny, tmp_path, "trainer.max_epochs=1"))
    capsys.readouterr()
    fit(_cfg(tiny, tmp_path, "trainer.max_epochs=2", "trainer.optimizer.config.lr=0.02"))
    err = capsys.readouterr().err
    assert "NOT applied" in err
    assert "trainer.optimizer.config.lr: 0.01 -> 0.02" in err   # a new optimizer type is refused instead

def test_resuming_a_finished_run_keeps_metrics_json(tiny, finished):
    before = (finished / "metrics.json").read_text()
    assert json.loads(before)["val_loss"] is not None
    summary = fit(_cfg(tiny, finished, "trainer.max_epochs=1"))
    assert (finished / "metrics.json").read_text() == before
    assert summary == json.loads(before)

def test_on_validation_gets_fresh_metrics_only(tiny, tmp_path):
    calls = []
    fit(_cfg(tiny, tmp_path, "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
             "trainer.limit_train_batches=2"), on_validation=lambda e, m: calls.append((e, dict(m))))
    assert [e for e, _ in calls] == [2, 4]
    assert calls[0][1] != calls[1][1]

def test_loggers_are_closed_when_a_trial_is_pruned(tiny, tmp_path, monkeypatch):
    from train.training import runlog

    closed = []
    real_close = runlog.TensorBoardLogger.close
    monkeypatch.setattr(runlog.TensorBoardLogger, "close", lambda self, status: (closed.append(status),
                                                                                 real_close(self, status)))

    def prune(epoch, metrics):
        raise optuna.TrialPruned(f"epoch {epoch}")

    with pytest.raises(optuna.TrialPruned):
        fit(_cfg(tiny, tmp_path, "trainer.limit_train_batches=2"), on_validation=prune)
    assert closed == ["KILLED"]

def test_a_crash_while_rewriting_metrics_csv_keeps_earlier_epochs(tiny, finished, tmp_path, monkeypatch):
    import shutil

    from train.training import runlog

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "metrics.csv").read_text()
    assert _csv_epochs(run) == [1]

    def dying_writerows(self, rows):
        raise KeyboardInterrupt("killed while rewriting metrics.csv")

    monkeypatch.setattr(runlog.csv.DictWriter, "writerows", dying_writerows)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(tiny, run, "trainer.max_epochs=2"))          # the resume rewrites metrics.csv
    assert (run / "metrics.csv").read_text() == before

ACCUM = ["trainer.max_steps=3", "trainer.max_epochs=1", "trainer.limit_train_batches=-1",
         "trainer.resume=never", "trainer.gradient_clip_val=0", "trainer.loss_weights.bar=0",
         "trainer.loss_weights.phrase=0", "model.expressive=false"]   # the exact claim: the step term

def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")

def _assert_close(a, b):
    assert a["global_step"] == b["global_step"] == 3
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)

def test_accumulated_micro_batches_with_padding_equal_one_batch(padded, tmp_path):
    from train.training.data import CompleteHierarchicalDrumDataset

    cfg = _cfg(padded, tmp_path / "one", *ACCUM, "trainer.batch_size=8")
    ds = CompleteHierarchicalDrumDataset(cfg.paths.ready, "train", seq_len=64, stride=16, steps_per_bar=16,
                                         bars_per_phrase=4)
    lengths = {int(ds[i]["mask"].sum()) for i in range(len(ds))}
    assert lengths == {48, 64}                                    # padded windows beside full ones
    fit(cfg)
    fit(_cfg(padded, tmp_path / "accum", *ACCUM, "trainer.batch_size=2", "trainer.accumulate_grad_batches=4"))
    _assert_close(_weights(tmp_path / "one"), _weights(tmp_path / "accum"))

def test_model_config_errors_are_reported_with_the_rest(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "model.rnn_type=rnn", "+model.hiden_dim=3", "trainer.batch_size=0")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "rnn_type must be one of" in msg and "model.hiden_dim: unknown model key" in msg
    assert "trainer.batch_size=0" in msg
    cfg = _cfg(tiny, tmp_path, "model=transformer", "model.nhead=3")
    with pytest.raises(ConfigError, match="divisible by nhead=3"):
        validate_config(cfg)
    cfg = _cfg(tiny, tmp_path, "model.horizon_bars=999")     # more bars than a training window holds
    with pytest.raises(ConfigError, match="model.horizon_bars=999: more bars than a training window"):
        validate_config(cfg)

def test_drum_info_reports_a_broken_manifest_and_survives_a_missing_store(tiny, tmp_path, capsys):
    import shutil

    cfg = _cfg(tiny, tmp_path)
    ready = tmp_path / "ready"
    shutil.copytree(cfg.paths.ready, ready)
    manifest = json.loads((ready / "manifest.json").read_text())
    assert build.drum_info(cfg, ready)["drum_names"][0] == "kick"
    (ready / "manifest.json").write_text(json.dumps({**manifest, "store": str(tmp_path / "gone.zarr")}))
    info = build.drum_info(cfg, ready)                       # the store is optional: the config's map
    assert "gone.zarr/zarr.json not found" in capsys.readouterr().err and len(info["drum_names"]) == 9
    (ready / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="manifest.json: unreadable"):
        build.drum_info(cfg, ready)

def _rl(*extra):
    from train.training import rewards

    cfg = compose(["rl=reinforce", "window.seq_len=64", "rl.prime_steps=16", "rl.sample_steps=32",
                   "rl.terms.density.weight=0", "rl.terms.ioi_var.weight=1.0", *extra])
    return cfg, rewards.build(cfg.rl, cfg.window)

def _real_batch(B=3, L=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    step = (torch.rand(B, L, 9, generator=g) < 0.2).float()
    return {"step": step, "mask": torch.ones(B, L, dtype=torch.bool), "start": torch.zeros(B, dtype=torch.long),
            "metrics": {"ioi_var": torch.full((B, 9), 99.0)}}     # a stored value far from any span's

def test_reinforce_scores_log_probs_in_the_mode_it_sampled():
    cfg, shaper = _rl("model.dropout=0.5", "model.step_hidden_dim=16", "model.bar_hidden_dim=8",
                      "model.phrase_hidden_dim=8")
    model = build.build_model(cfg, num_drums=9).train()
    modes, forward = [], model.forward
    model.forward = lambda *a, **k: (modes.append(model.training), forward(*a, **k))[1]
    loss, _ = shaper.reinforce(model, _real_batch())
    assert modes == [False]                # generate samples in eval mode: the scoring forward too
    assert model.training and loss.requires_grad

def test_ioi_var_window_target_is_the_same_measure_of_the_real_steps():
    from kernels import window_metrics

    cfg, shaper = _rl("model.step_hidden_dim=16", "model.bar_hidden_dim=8", "model.phrase_hidden_dim=8")
    batch = _real_batch(B=1)
    _, logs = shaper.reinforce(build.build_model(cfg, num_drums=9), batch)
    span = batch["step"][0, 16:48].numpy().astype("uint8")       # the real steps the sample replaces
    target = float(window_metrics(span, seq_len=32, stride=32, steps_per_bar=16, beats_per_bar=4)["ioi_var"][0].mean())
    assert logs["reward/ioi_var_r"] == pytest.approx(-abs(logs["reward/ioi_var"] - target), rel=1e-5)

    # surrogate: predictions equal to the real next steps are at distance 0, whatever is stored
    cfg = compose(["rl=surrogate", "window.seq_len=64", "rl.terms.density.weight=0", "rl.terms.ioi_var.weight=1.0"])
    from train.training import rewards

    shaper = rewards.build(cfg.rl, cfg.window)
    batch = _real_batch(B=2)
    logits = torch.zeros(2, 64, 9)
    logits[:, :-1] = 40 * (2 * batch["step"][:, 1:] - 1)           # logits[:, t] predict step t+1
    _, logs = shaper.surrogate(logits, batch)
    assert abs(logs["reward/ioi_var_r"]) < 1e-3 and logs["reward/ioi_var"] > 1

def test_midi_prime_in_another_meter_is_an_error_naming_it(tmp_path):
    import numpy as np

    from pipeline.drums import DrumMap
    from pipeline.midi import write_midi
    from train.generate.run import read_prime

    dm = DrumMap.default()
    hits = np.zeros((48, dm.num_drums), np.uint8)
    hits[::4, 0] = 1
    waltz = write_midi(tmp_path / "waltz.mid", hits, drum_map=dm, beats_per_bar=3)
    with pytest.raises(ValueError, match=r"waltz.mid: the prime is in 3-beat bars of 12 steps.*16 steps"):
        read_prime(waltz, dm, steps_per_quarter=4, steps_per_bar=16)
    four = write_midi(tmp_path / "four.mid", hits, drum_map=dm, beats_per_bar=4)
    assert read_prime(four, dm, steps_per_quarter=4, steps_per_bar=16).hits.shape == (48, dm.num_drums)

def test_default_tune_space_matches_its_objective():
    from train.tune import space

    cfg = space.compose([])
    space.check_space(cfg, cfg.tune.space)
    paths = [p for spec in cfg.tune.space.values() for p in space.space_paths(spec)]
    assert not [p for p in paths if p.startswith("rl")] and "rl.enabled=true" not in cfg.tune.trial_overrides
    rewards_cfg = space.compose(["tune=rewards"])                 # reward weights: judged by generated windows
    space.check_space(rewards_cfg, rewards_cfg.tune.space)
    assert rewards_cfg.tune.objective.generated.weight > 0 and "rl_weight" in rewards_cfg.tune.space
    bad = space.compose(["+tune.space.w={path: rl.weight, type: float, low: 0.0, high: 1.0}"])
    with pytest.raises(ValueError, match=r"tune.space \['w'\] search reward shaping"):
        space.check_space(bad, bad.tune.space)

def test_strict_deterministic_raises_where_deterministic_warns():
    try:
        build.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        build.seed_everything(0, deterministic=False, strict=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)

def test_model_structure_and_profiler_dir(tiny, tmp_path, capsys):
    fit(_cfg(tiny, tmp_path / "run", "trainer.max_epochs=1", "trainer.log_model_structure=true",
             "trainer.profile=true", f"trainer.profiler_dir={tmp_path / 'prof'}"))
    out = capsys.readouterr().out
    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    total = sum(t.numel() for t in model.values())
    assert "HierarchicalDrumModel(" in out and f"parameters: {total:,} (step " in out
    assert " bar " in out and " phrase " in out and " heads " in out
    assert list((tmp_path / "prof").glob("*.pt.trace.json*"))           # the trace went where asked
    assert not (tmp_path / "run" / "profile").exists()
