"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
SIGTERM / SIGINT: the trainer saves at the step boundary, closes its loggers, says so and exits;
resuming is bit-exact. Under torchrun --max-restarts=1, a rank killed outright ends in a finished
run equal to one never interrupted..
The rest is tests/unit/test_preemption.py."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from common.config import REPO_ROOT
from train.training.checkpoint import load_checkpoint

EPOCHS, BATCHES = 3, 8


def _cmd(overrides, run_dir, *extra):
    return [sys.executable, "-m", "train", *overrides, f"trainer.run_dir={run_dir}",
            f"hydra.run.dir={run_dir}/hydra", f"trainer.max_epochs={EPOCHS}",
            f"trainer.limit_train_batches={BATCHES}", "trainer.deterministic=true", "model.dropout=0.1", *extra]


def _wait_for(path, proc, done) -> bool:
    """True once `path` holds a checkpoint for which done(ck) holds; False if the run ended first."""
    while proc.poll() is None:
        try:
            if done(torch.load(path, weights_only=True)):
                return True
        except (FileNotFoundError, EOFError, RuntimeError, KeyError):
            pass
        time.sleep(0.005)
    return False


def _same_weights(a, b, steps=EPOCHS * BATCHES):
    assert a["global_step"] == b["global_step"] == steps
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_step_boundary_and_resume_is_bit_exact(tiny, tmp_path, signum):
    whole = tmp_path / "whole"
    subprocess.run(_cmd(tiny, whole, "trainer.resume=never"), cwd=REPO_ROOT, check=True, capture_output=True,
                   timeout=300)
    # no mid-epoch checkpoints of its own: the one after the signal is the handler's
    run = tmp_path / "stopped"
    proc = subprocess.Popen(_cmd(tiny, run, "trainer.save_every_n_steps=0"), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(run / "checkpoints" / "last.pt", proc, lambda ck: ck["epoch"] >= 1), proc.stderr.read()
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signum, err[-2000:]
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")
    step = stopped["global_step"]
    assert f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved" in err
    assert BATCHES <= step < EPOCHS * BATCHES and "Traceback" not in err
    out = subprocess.run(_cmd(tiny, run), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"step {step}" in out.stdout
    _same_weights(load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_of_rank(agent: int, rank: int) -> int | None:
    for child in open(f"/proc/{agent}/task/{agent}/children").read().split():
        try:
            env = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


def test_torchrun_restarts_after_one_rank_is_killed_and_finishes_as_if_never_stopped(tiny, tmp_path):
    def torchrun(run_dir, *extra):
        # c10d rendezvous: each restart is a new round with a fresh store (the static one, from
        # --master_port, keeps the first round's gloo addresses and the restarted ranks cannot connect)
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", *extra, "-m", "train",
                *_cmd(tiny, run_dir, "trainer.save_every_n_steps=1", "trainer.batch_size=4")[3:]]

    whole = tmp_path / "whole"
    subprocess.run(torchrun(whole), cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    run = tmp_path / "killed"
    agent = subprocess.Popen(torchrun(run, "--max-restarts=1"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    assert _wait_for(run / "checkpoints" / "last.pt", agent, lambda ck: ck["global_step"] >= BATCHES + 2)
    victim = _worker_of_rank(agent.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    err = agent.communicate(timeout=600)[1]
    assert agent.returncode == 0, err[-3000:]
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert a["epoch"] == EPOCHS and len(a["rng"]) == 2
    _same_weights(a, load_checkpoint(run / "checkpoints" / "last.pt"), a["global_step"])
