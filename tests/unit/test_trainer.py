"""Trainer building blocks on their own: optimizers, schedules, checkpoints, config checks, rewards."""

import inspect
import math

import pytest
import torch
from omegaconf import OmegaConf

from common.config import compose
from train.training.checkpoint import load_checkpoint, rank_top_k, rng_state, save_checkpoint, set_rng_state
from common.config import ConfigError
from train.training.optim import build_optimizer, build_scheduler
from train.training.config_checks import validate_config

OPTIMIZERS = sorted(n for n, c in vars(torch.optim).items()
                    if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer")

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_torch_optimizer_builds_and_steps(name):
    layer = torch.nn.Linear(3, 2, bias=False)           # 2-D weights only: Muon accepts nothing else
    opt = build_optimizer(layer.parameters(), OmegaConf.create({"type": name, "config": {"lr": 0.01}}))
    assert type(opt).__name__ == name
    if name not in ("SparseAdam", "LBFGS"):
        before = layer.weight.detach().clone()
        layer(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
        assert not torch.equal(before, layer.weight)

def test_default_optimizer_is_adamw_with_weight_decay():
    cfg = compose([])
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg.trainer.optimizer)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] > 0

def _lrs(sched_cfg, steps=30, lr=1.0):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = build_scheduler(opt, OmegaConf.create(sched_cfg), total_steps=steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out

def test_cosine_warms_up_linearly_then_decays_to_min():
    lrs = _lrs({"type": "cosine", "config": {"warmup_steps": 5, "min_lr_ratio": 0.1}})
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 24 / 25)))

def test_inverse_and_constant_schedules():
    inv = _lrs({"type": "inverse", "config": {"inv_gamma": 10.0, "power": 1.0}})
    assert inv[10] == pytest.approx(1 / (1 + 10 / 10.0))
    const = _lrs({"type": "constant", "config": {"warmup_steps": 2}})
    assert const[:3] == pytest.approx([0.5, 1.0, 1.0]) and const[-1] == 1.0
    assert _lrs({"enabled": False, "type": "cosine"}) == [1.0] * 30

def test_any_torch_scheduler_class_builds():
    lrs = _lrs({"type": "StepLR", "config": {"step_size": 10, "gamma": 0.5}})
    assert lrs[9] == 1.0 and lrs[10] == 0.5

def test_scheduler_bad_key_is_named():
    with pytest.raises(ConfigError, match="warmup"):
        _lrs({"type": "cosine", "config": {"warmpu_steps": 3}})

def test_bad_config_values_are_all_reported_before_work(tmp_path):
    cfg = compose(["trainer.precision=fp8", "trainer.batch_size=0", "trainer.optimizer.type=Adamm",
                   "trainer.resume=" + str(tmp_path / "nope.pt"), "rl=reinforce", "rl.sample_steps=10",
                   "trainer.accumulate_grad_batches=0", "window.stride=24",
                   # a missing export, whatever this checkout's data/ready holds
                   "paths.ready=" + str(tmp_path / "no_ready")])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    for key in ("paths.ready=" + str(cfg.paths.ready), "trainer.precision='fp8'", "trainer.batch_size=0", "Adamm", "nope.pt",
                "rl.sample_steps=10", "accumulate_grad_batches=0",
                "window.stride=24 is not a whole number of bars"):
        assert key in msg

def test_checkpoint_roundtrip_weights_only_with_rng(tmp_path):
    torch.manual_seed(3)
    state = rng_state()
    expect = torch.rand(3)
    path = save_checkpoint(tmp_path / "last.pt", {"rng": [state], "x": torch.arange(3), "epoch": 2})
    ck = torch.load(path, weights_only=True)                 # what load_checkpoint does
    assert ck["epoch"] == 2 and torch.equal(ck["x"], torch.arange(3))
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert torch.equal(torch.rand(3), expect)

def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"global_step": 1, "w": torch.ones(4)})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.flush()
        f.truncate(10)                     # half-written: truncated, then the "process" dies
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"global_step": 2, "w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    ck = load_checkpoint(path)
    assert ck["global_step"] == 1 and torch.equal(ck["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temp file left

def test_corrupt_checkpoint_message_names_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)

def test_top_k_keeps_the_best_k_and_deletes_the_rest(tmp_path):
    top = []
    kept = {}
    for epoch, loss in enumerate([0.9, 0.7, 0.8, 0.95, 0.6], start=1):
        top, keep, dropped = rank_top_k(top, epoch, loss, k=2)
        for name in dropped:                  # as the trainer does, once its new state is committed
            (tmp_path / name).unlink()
        if keep:
            name = top[[e[1] for e in top].index(epoch)][2]
            (tmp_path / name).write_text("x")
            kept[epoch] = keep
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_epoch_2_loss_0.7000.pt",
                                                          "best_epoch_5_loss_0.6000.pt"]
    assert 4 not in kept

def test_run_writes_top_k_checkpoints_logs_config_and_versions(tiny, tmp_path):
    import csv
    import json

    from train.training.trainer import fit

    summary = fit(compose(tiny + [f"trainer.run_dir={tmp_path}", "trainer.max_epochs=4", "trainer.save_top_k=2",
                                  "trainer.save_every_n_epochs=2", "trainer.limit_train_batches=3"]))
    ckpts = tmp_path / "checkpoints"
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    best2 = sorted(rows, key=lambda r: float(r["val_loss"]))[:2]
    want = {f"best_epoch_{r['epoch']}_loss_{float(r['val_loss']):.4f}.pt" for r in best2}
    assert {p.name for p in ckpts.glob("best_epoch_*.pt")} == want
    assert {p.name for p in ckpts.glob("epoch_*.pt")} == {"epoch_2.pt", "epoch_4.pt"}
    best = load_checkpoint(ckpts / "best.pt")
    assert best["val"]["loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    last = load_checkpoint(ckpts / "last.pt")
    for key in ("model", "model_config", "config", "drum_names", "drum_pitches", "steps_per_quarter",
                "optimizer", "scheduler", "scaler", "epoch", "global_step", "sampler", "rng", "best"):
        assert key in last, key
    assert last["drum_names"][0] == "kick" and last["drum_pitches"][0] == 36
    assert last["epoch"] == 4 and last["global_step"] == 12
    assert json.loads((tmp_path / "metrics.json").read_text())["best_val_loss"] == summary["best_val_loss"]
    assert "torch" in json.loads((ckpts / "versions.json").read_text())
    assert OmegaConf.load(ckpts / "config.yaml").trainer.save_top_k == 2
    # the model learns: validation loss falls
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])

def test_gradient_accumulation_equals_the_larger_batch(tiny, tmp_path):
    from train.training.trainer import fit

    # model.expressive=false: the velocity/offset MSE averages over each micro-batch's hit cells,
    # whose count differs between the halves, so two half-batch means are not the batch mean
    common = tiny + ["trainer.max_steps=3", "trainer.max_epochs=1", "trainer.limit_train_batches=-1",
                     "trainer.save_top_k=0", "trainer.resume=never", "model.expressive=false"]
    fit(compose(common + [f"trainer.run_dir={tmp_path}/big", "trainer.batch_size=8"]))
    fit(compose(common + [f"trainer.run_dir={tmp_path}/acc", "trainer.batch_size=4",
                          "trainer.accumulate_grad_batches=2"]))
    a = load_checkpoint(tmp_path / "big" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "acc" / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 3
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)

@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu(tiny, tmp_path, precision):
    from train.training.trainer import fit

    summary = fit(compose(tiny + [f"trainer.run_dir={tmp_path}", "trainer.max_epochs=1",
                                  f"trainer.precision={precision}", "trainer.resume=never"]))
    assert math.isfinite(summary["val_loss"]) and summary["global_step"] == 6
    scaler = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]
    assert bool(scaler) == (precision == "16-mixed")      # GradScaler only for fp16

def test_progress_line_for_logs_says_step_loss_speed_and_eta():
    """Without a terminal the trainer prints one line every 10 s (a fake clock here, no waiting)."""
    import io

    from common.progress import ProgressLine

    now = [0.0]
    out = io.StringIO()
    line = ProgressLine(total_steps=100, enabled=True, every_s=10, stream=out, clock=lambda: now[0])
    assert line.update(0, 1.0, 50.0) is None                  # the first update only starts the clock
    now[0] = 5.0
    assert line.update(5, 0.9, 50.0) is None                  # < 10 s since the last line
    now[0] = 20.0
    assert line.update(20, 0.5, 64.0) == "step 20/100  loss 0.5000  64 samples/s  ETA 1m20s"
    now[0] = 25.0
    assert line.update(25, 0.4, 64.0) is None
    assert out.getvalue() == "step 20/100  loss 0.5000  64 samples/s  ETA 1m20s\n"
    assert ProgressLine(100, enabled=False, stream=out).update(50, 0.1, 1.0) is None
