"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Real torchrun (gloo, CPU): 2 processes, and 2 nodes × 1 process, equal 1 process with the same global batch..
The rest is tests/unit/test_ddp.py."""
import socket
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from common.config import REPO_ROOT
from train.training.checkpoint import load_checkpoint
from train.training.build import build_model

STEPS, GLOBAL_BATCH = 4, 8
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, "-m", "train", *_args(tiny, run, GLOBAL_BATCH)], cwd=REPO_ROOT,
                   check=True, capture_output=True, timeout=300)
    return load_checkpoint(run / "checkpoints" / "last.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tiny, run_dir, batch):
    # model.expressive=false: the velocity/offset MSE averages over each rank's hit cells, whose
    # count differs between ranks, so the mean of the ranks' means is not the global batch mean
    return [*tiny, f"trainer.run_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra", "trainer.resume=never",
            f"trainer.batch_size={batch}", f"trainer.max_steps={STEPS}", "trainer.max_epochs=1",
            "trainer.limit_train_batches=-1", "model.expressive=false",
            # the head with parameters of its own, read by the loss: DDP must see them used in its
            # forward (they failed with "mark a variable ready only once" while the loss ran outside it)
            "model.output=autoregressive"]


def _assert_same_weights(a, b):
    assert a["global_step"] == b["global_step"] == STEPS
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_two_processes_equal_one_process_same_global_batch(tiny, single, tmp_path):
    cmd = TORCHRUN + ["--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                      f"--master_port={_free_port()}", "-m", "train",
                      *_args(tiny, tmp_path, GLOBAL_BATCH // 2)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert len(ddp["rng"]) == 2                   # every rank's RNG state was saved
    _assert_same_weights(single, ddp)
    # training moved the weights away from the shared initialisation, so agreement is not trivial
    torch.manual_seed(single["config"]["trainer"]["seed"])
    init = build_model(OmegaConf.create(single["config"]), num_drums=9).state_dict()
    assert not torch.allclose(init["input.weight"], single["model"]["input.weight"], atol=1e-3)


def test_two_nodes_one_process_each_equal_single_node(tiny, single, tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(TORCHRUN + ["--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                                          "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "train",
                                          *_args(tiny, tmp_path, GLOBAL_BATCH // 2)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    _assert_same_weights(single, load_checkpoint(tmp_path / "checkpoints" / "last.pt"))
