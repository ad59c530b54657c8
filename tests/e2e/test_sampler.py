"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
WindowBatchSampler: determinism, DDP sharding (pure and under real torchrun), mid-epoch resume.
The rest is tests/unit/test_sampler.py."""
import json
import os
import subprocess
import sys


from train.training.data import CompleteHierarchicalDrumDataset
from tests.unit.test_sampler import RANK_SCRIPT, REPO, ready  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_torchrun_two_ranks_cover_every_window_once(ready, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(ready), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["batches"] == ranks[1]["batches"]
    ds = CompleteHierarchicalDrumDataset(ready, "train", 64, 16, 16, 4)
    assert len(ds) % 2 == 0
    seen = [tuple(x) for r in ranks for x in r["rows"]]
    expected = {(int(s), int(a)) for s, a in ds.windows[:, 1:3]}
    assert len(seen) == len(ds) and set(seen) == expected
    assert not set(map(tuple, ranks[0]["rows"])) & set(map(tuple, ranks[1]["rows"]))
