"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
rl.learn_weights: reward-term weights learned in the trainer (uncertainty weighting), end to end.
The rest is tests/unit/test_learned_weights.py."""
import subprocess
import sys

import pytest
import torch

from common.config import REPO_ROOT
from tests.e2e.test_ddp import TORCHRUN, _free_port
from train.training.checkpoint import load_checkpoint
from tests.unit.test_learned_weights import BOUND, LEARNED, START, _weights, run  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_two_processes_equal_one_process_with_learned_weights(tiny, tmp_path):
    def args(run_dir, batch):   # no expressive heads: their per-rank hit-cell means are not the global mean
        return [*tiny, *LEARNED, f"trainer.run_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra",
                "trainer.resume=never", f"trainer.batch_size={batch}", "trainer.max_steps=4",
                "trainer.max_epochs=1", "trainer.limit_train_batches=-1", "model.expressive=false"]

    single = subprocess.run([sys.executable, "-m", "train", *args(tmp_path / "one", 8)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(TORCHRUN + ["--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                                     f"--master_port={_free_port()}", "-m", "train", *args(tmp_path / "two", 4)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 4
    wa, wb = _weights(a), _weights(b)
    assert all(abs(wa[k] - START[k]) > 1e-3 for k in START)   # they moved, so agreement is not trivial
    for k in START:
        assert wb[k] == pytest.approx(wa[k], rel=1e-5), k
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
