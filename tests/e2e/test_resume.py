"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Exact resume: a run SIGKILLed mid-epoch and resumed ends with the same weights as one never stopped..
The rest is tests/unit/test_resume.py."""
import os
import signal
import subprocess
import sys
import time

import torch

from common.config import REPO_ROOT
from train.training.checkpoint import load_checkpoint

EPOCHS, BATCHES = 3, 8


def _cmd(overrides, run_dir):
    return [sys.executable, "-m", "train", *overrides, f"trainer.run_dir={run_dir}",
            f"hydra.run.dir={run_dir}/hydra", f"trainer.max_epochs={EPOCHS}",
            f"trainer.limit_train_batches={BATCHES}", "trainer.save_every_n_steps=1",
            "trainer.deterministic=true", "model.dropout=0.1"]   # dropout: the torch RNG must resume too


def _poll_checkpoint(path, proc, want_step):
    """True once `path` holds a checkpoint at `want_step` or later and mid-epoch; False if the run
    ended first."""
    while proc.poll() is None:
        try:
            ck = torch.load(path, weights_only=True)
            if ck["global_step"] >= want_step and 0 < ck["batch_in_epoch"]:
                return True
        except (FileNotFoundError, EOFError, RuntimeError):
            pass
        time.sleep(0.005)
    return False


def _kill_mid_epoch(cmd, run_dir, attempts=3):
    """Start the run and SIGKILL it inside its second epoch. A tiny run can finish all its steps
    between two polls on a loaded machine: that race (a clean exit) is retried in a fresh folder;
    a crash fails with the run's stderr."""
    for attempt in range(attempts):
        folder = run_dir / f"try{attempt}"
        err = folder.with_suffix(".stderr")
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(err, "w") as stderr:
            proc = subprocess.Popen(cmd(folder), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
            caught = _poll_checkpoint(folder / "checkpoints" / "last.pt", proc, want_step=BATCHES + 2)
            if caught:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        if caught:
            assert proc.returncode == -signal.SIGKILL
            return folder
        assert proc.returncode == 0, err.read_text()[-2000:]
    raise AssertionError(f"the run finished before a mid-epoch checkpoint could be caught, {attempts} times")


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny, tmp_path):
    # the uninterrupted run loads in the loop, the broken one with 2 prefetching threads: the
    # checkpoint must count batches trained on, not prefetched, and the batches must be the same
    threads = ["trainer.num_workers=2"]
    whole = tmp_path / "whole"
    done = subprocess.run(_cmd(tiny + ["trainer.resume=never"], whole), cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True, timeout=300)
    # the end of training says where the checkpoints and logs are
    assert f"checkpoints: {whole}/checkpoints/ (best.pt, last.pt" in done.stdout
    assert f"logs: {whole}/ (metrics.csv" in done.stdout

    broken = _kill_mid_epoch(lambda folder: _cmd(tiny + threads, folder), tmp_path / "broken")
    last = broken / "checkpoints" / "last.pt"
    killed_at = load_checkpoint(last)
    assert killed_at["global_step"] < EPOCHS * BATCHES        # it really was stopped early

    out = subprocess.run(_cmd(tiny + threads + ["trainer.resume=auto"], broken), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"step {killed_at['global_step']}" in out.stdout   # "resumed from …" line

    a, b = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == EPOCHS * BATCHES
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["best"]["loss"] == b["best"]["loss"]
