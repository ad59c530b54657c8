"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Every data stage on a dask.distributed cluster: `<stage>.scheduler=<address>` for ingest, build,
metrics and export on a LocalCluster of two worker processes writes what the local threads write..
The rest is tests/unit/test_cluster.py."""
from pathlib import Path

import pytest

from pipeline.build import build
from common.config import compose
from pipeline.export import export
from pipeline.ingest import ingest
from pipeline.metrics import run as compute_metrics
from pipeline.store import content_hash

pytestmark = pytest.mark.slow


def _pipeline(data_dir: Path, scheduler: str) -> dict:
    cfg = compose(["data=builtin", "data.corpus.num_songs=6", f"paths.data_dir={data_dir}",
                   "ingest.files_per_task=2", "store.chunk_steps=1000", "metrics.block_steps=2000",
                   f"ingest.scheduler={scheduler}", f"store.scheduler={scheduler}",
                   f"metrics.scheduler={scheduler}", f"export.scheduler={scheduler}"])
    ingest(cfg)
    build(cfg)
    compute_metrics(cfg)
    export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=int(cfg.window.seq_len),
           stride=int(cfg.window.stride), metric_names=list(cfg.export.metrics),
           scheduler=cfg.export.scheduler, workers=cfg.export.workers)
    ready = Path(cfg.paths.ready)
    files = {p.relative_to(ready).as_posix(): p.read_bytes() for p in sorted(ready.rglob("*.npy"))}
    return {"store": content_hash(cfg.paths.store), "metrics": content_hash(cfg.paths.metrics), "ready": files}


def test_whole_pipeline_on_a_local_cluster_equals_the_threaded_run(tmp_path):
    from dask.distributed import LocalCluster

    local = _pipeline(tmp_path / "threads", "threads")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dist = _pipeline(tmp_path / "cluster", cluster.scheduler_address)
    assert dist["store"] == local["store"]
    assert dist["metrics"] == local["metrics"]
    assert dist["ready"].keys() == local["ready"].keys() and "hits.npy" in local["ready"]
    for name, data in local["ready"].items():
        assert dist["ready"][name] == data, name
