"""DDP set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

A plain `python -m train` is a world of one and never touches torch.distributed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(num_gpus: int) -> Dist:
    """Join the process group torchrun describes; gloo on CPU, nccl on GPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = num_gpus > 0
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                **_restart_store(rank, world))
    return Dist(rank, world, local, device)


def _restart_store(rank: int, world: int) -> dict:
    """After a torchrun restart (--max-restarts), the rendezvous store under a prefix of this
    attempt: the agent's store still holds the first attempt's process-group keys (the gloo
    addresses of the dead workers), which the new workers would read and fail to connect to."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0":
        return {}
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world))
    return {"store": dist.PrefixStore(f"restart{restart}", store)}


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_mean(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy); the identity for one process."""
    values = values.detach().clone()
    if d.enabled:
        dist.all_reduce(values)
        values /= d.world_size
    return values


def all_gather_object(d: Dist, obj) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
