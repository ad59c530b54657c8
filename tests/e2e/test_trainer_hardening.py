"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The trainer's bookkeeping under failure: tiny real runs on real data.
The rest is tests/unit/test_trainer_hardening.py."""
import subprocess
import sys

import pytest

from common.config import REPO_ROOT
from train.training.checkpoint import load_checkpoint, save_checkpoint
from train.training.trainer import fit
from tests.unit.test_trainer_hardening import ACCUM, _assert_close, _cfg, _weights, finished, padded, tiny  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_world_size_mismatch_and_cli_exit_2(tiny, finished, tmp_path):
    ck = load_checkpoint(finished / "checkpoints" / "last.pt")
    ck["rng"] = ck["rng"] * 2                                    # as if saved by 2 processes
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", ck)
    out = subprocess.run([sys.executable, "-m", "train", *tiny, f"trainer.run_dir={tmp_path}",
                          f"hydra.run.dir={tmp_path}/hydra", "trainer.max_epochs=2"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "saved by 2 process(es), this run has 1" in err[0] and "--nproc_per_node=2" in err[0]


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb")).Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_train_scalars_are_means_over_the_steps_summed(tiny, tmp_path):
    # 6 steps per epoch, logged every 4: the log at step 8 sums steps 5-8 across the epoch boundary
    common = ["trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.resume=never"]
    fit(_cfg(tiny, tmp_path / "every", *common, "trainer.log_interval=1"))
    fit(_cfg(tiny, tmp_path / "four", *common, "trainer.log_interval=4"))
    each, four = _scalars(tmp_path / "every", "train/loss"), _scalars(tmp_path / "four", "train/loss")
    assert sorted(four) == [4, 8, 12]
    for step, value in four.items():
        assert value == pytest.approx(sum(each[s] for s in range(step - 3, step + 1)) / 4, rel=1e-5), step


def test_two_processes_accumulating_padded_windows_equal_one(padded, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fit(_cfg(padded, tmp_path / "one", *ACCUM, "trainer.batch_size=8"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "train", *padded, *ACCUM,
           f"trainer.run_dir={tmp_path / 'two'}", f"hydra.run.dir={tmp_path}/hydra",
           "trainer.batch_size=2", "trainer.accumulate_grad_batches=2"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))


def test_cli_model_error_exits_2_before_any_work(tiny, tmp_path):
    out = subprocess.run([sys.executable, "-m", "train", *tiny, f"trainer.run_dir={tmp_path}/run",
                          f"hydra.run.dir={tmp_path}/hydra", "model.rnn_type=rnn"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "rnn_type must be one of" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
