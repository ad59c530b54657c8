"""WindowBatchSampler: determinism, DDP sharding (pure and under real torchrun), mid-epoch resume."""

import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.ready_data import build_ready, make_songs
from train.training.data import CompleteHierarchicalDrumDataset, WindowBatchSampler, make_loader

REPO = Path(__file__).resolve().parents[2]

def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [b.indices.tolist() for b in sampler]

def test_deterministic_for_seed_and_epoch():
    a, b = WindowBatchSampler(100, 8, seed=1), WindowBatchSampler(100, 8, seed=1)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 4) != _epoch(b, 3)
    assert _epoch(WindowBatchSampler(100, 8, seed=2), 3) != _epoch(b, 3)
    assert sorted(sum(_epoch(a, 4), [])) == list(range(100))
    assert _epoch(WindowBatchSampler(10, 4, shuffle=False), 9) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    requests = list(WindowBatchSampler(10, 4, seed=7))
    assert [r.seed for r in requests] == [(7, 0, 0, 0), (7, 0, 0, 1), (7, 0, 0, 2)]

@pytest.mark.parametrize("n, world, batch, drop_last", [(96, 2, 8, False), (97, 2, 8, False), (100, 3, 7, False),
                                                        (97, 2, 8, True), (5, 4, 2, False), (0, 2, 4, False)])
def test_ranks_share_every_window(n, world, batch, drop_last):
    per_rank = [_epoch(WindowBatchSampler(n, batch, seed=0, num_replicas=world, rank=r, drop_last=drop_last), 1)
                for r in range(world)]
    lengths = {len(b) for b in per_rank}
    assert len(lengths) == 1 and lengths == {len(WindowBatchSampler(n, batch, num_replicas=world, rank=0,
                                                                    drop_last=drop_last))}
    seen = np.array(sum((sum(b, []) for b in per_rank), []), dtype=np.int64)
    if drop_last:
        assert len(seen) == len(set(seen.tolist())) == (n // world // batch) * batch * world
    else:
        assert set(seen.tolist()) == set(range(n))
        assert len(seen) == -(-n // world) * world          # padded by at most world - 1 repeats
        if n % world == 0:
            assert len(seen) == n                           # exactly once

@pytest.mark.parametrize("world, drop_last", [(1, False), (2, False), (2, True), (3, True)])
def test_groups_bucket_batches_and_every_rank_yields_as_many(world, drop_last):
    """groups (the windows' bar lengths): no batch mixes groups, ranks agree on the batch count,
    every window is seen (without drop_last), and a group smaller than a batch is kept."""
    groups = np.array([16] * 61 + [12] * 30 + [20] * 3)
    n = len(groups)
    per_rank = [_epoch(WindowBatchSampler(n, 8, seed=5, num_replicas=world, rank=r, drop_last=drop_last,
                                          groups=groups), 2) for r in range(world)]
    assert {len(b) for b in per_rank} == {len(WindowBatchSampler(n, 8, num_replicas=world, rank=0,
                                                                 drop_last=drop_last, groups=groups))}
    for batches in per_rank:
        assert all(len(set(groups[b].tolist())) == 1 for b in batches)
    seen = set(sum((sum(b, []) for b in per_rank), []))
    assert {int(groups[i]) for i in seen} == {12, 16, 20}     # the 3 windows of 5/4 too
    if not drop_last:
        assert seen == set(range(n))
    one = WindowBatchSampler(n, 8, seed=5, groups=np.full(n, 16))
    assert _epoch(one, 2) == _epoch(WindowBatchSampler(n, 8, seed=5), 2)   # one group: the plain sampler
    assert _epoch(WindowBatchSampler(n, 8, seed=5, groups=groups), 2) != _epoch(
        WindowBatchSampler(n, 8, seed=5, groups=groups), 3)

def test_resume_state_continues_with_unseen_batches():
    full = _epoch(WindowBatchSampler(50, 4, seed=3), 2)
    s = WindowBatchSampler(50, 4, seed=3)
    s.set_epoch(2)
    it = iter(s)
    head = [next(it).indices.tolist() for _ in range(5)]
    state = s.state_dict()
    assert state["epoch"] == 2 and state["position"] == 5
    resumed = WindowBatchSampler(50, 4, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)                                     # same epoch: position kept
    assert head + [b.indices.tolist() for b in resumed] == full
    resumed.set_epoch(3)
    assert resumed.position == 0 and len(list(resumed)) == len(full)
    with pytest.raises(ValueError, match="num_replicas=1, this sampler 2"):
        WindowBatchSampler(50, 4, seed=3, num_replicas=2, rank=0).load_state_dict(state)

@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    build_ready(root, make_songs([400, 50, 350, 64]), seq_len=64, stride=16)
    return root / "ready"

@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_mid_epoch_sees_exactly_the_unseen_windows(ready, workers):
    ds = CompleteHierarchicalDrumDataset(ready, "train", 64, 16, 16, 4)
    loader = make_loader(ds, batch_size=6, seed=11, num_workers=workers)
    loader.sampler.set_epoch(1)
    full = [b["start"].tolist() + b["song"].tolist() for b in loader]
    loader.sampler.set_epoch(1)
    loader.sampler.position = 0
    seen, state = [], None
    for n, b in enumerate(loader, 1):                        # workers prefetch past this point
        seen.append(b["start"].tolist() + b["song"].tolist())
        if n == 4:
            state = loader.sampler.state_dict()
            break
    assert state["position"] == 4
    fresh = make_loader(ds, batch_size=6, seed=11, num_workers=workers)
    fresh.sampler.load_state_dict(state)
    fresh.sampler.set_epoch(1)
    rest = [b["start"].tolist() + b["song"].tolist() for b in fresh]
    assert seen + rest == full and len(full) == len(loader)
    assert fresh.sampler.state_dict()["position"] == len(full)

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    from train.training.data import CompleteHierarchicalDrumDataset, make_loader
    dist.init_process_group("gloo")
    ds = CompleteHierarchicalDrumDataset(sys.argv[1], "train", 64, 16, 16, 4)
    loader = make_loader(ds, batch_size=5, seed=4)
    loader.sampler.set_epoch(2)
    rows = [[int(s), int(a)] for b in loader for s, a in zip(b["song"], b["start"])]
    out = {"rank": dist.get_rank(), "world": loader.sampler.num_replicas, "rows": rows, "batches": len(loader)}
    with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as fh:
        json.dump(out, fh)
    dist.destroy_process_group()
""")
