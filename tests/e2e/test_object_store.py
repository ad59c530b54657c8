"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Stores anywhere: build and metrics with `paths.store` / `paths.metrics` as s3:// URLs, against an
S3-compatible server (moto's server mode) that the test starts on 127.0.0.1; the outputs equal the
local run's, and a failed metrics run leaves the previous output in place..
The rest is tests/unit/test_object_store.py."""
import pytest

from pipeline.build import build
from common.config import compose
from pipeline.ingest import ingest
from pipeline.metrics import run as compute_metrics
from pipeline.store import Store, content_hash

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_bucket(monkeypatch):
    """A local S3 server and an empty bucket; fake credentials, endpoint from AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("hierdrums")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _cfg(data_dir, store, metrics):
    return compose(["data=builtin", "data.corpus.num_songs=5", f"paths.data_dir={data_dir}",
                    f"paths.store={store}", f"paths.metrics={metrics}", "store.chunk_steps=1000",
                    "metrics.block_steps=1500"])


def test_build_and_metrics_on_s3_equal_the_local_run(tmp_path, s3_bucket, monkeypatch):
    local = _cfg(tmp_path / "local", tmp_path / "local" / "store.zarr", tmp_path / "local" / "metrics.zarr")
    ingest(local), build(local), compute_metrics(local)
    remote = _cfg(tmp_path / "remote", "s3://hierdrums/run/store.zarr", "s3://hierdrums/run/metrics.zarr")
    ingest(remote), build(remote)
    summary = compute_metrics(remote)
    assert summary["songs"] == 5 and summary["errors"] == []
    assert s3_bucket.exists("hierdrums/run/store.zarr/zarr.json")
    assert Store("s3://hierdrums/run/store.zarr").num_songs == 5
    assert content_hash("s3://hierdrums/run/store.zarr") == content_hash(local.paths.store)
    assert content_hash("s3://hierdrums/run/metrics.zarr") == content_hash(local.paths.metrics)
    assert [p for p in s3_bucket.ls("hierdrums/run") if p.endswith(".tmp")] == []   # temporaries gone

    before = content_hash("s3://hierdrums/run/metrics.zarr")
    monkeypatch.setattr("pipeline.metrics._finish", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        compute_metrics(remote)
    assert content_hash("s3://hierdrums/run/metrics.zarr") == before
    assert [p for p in s3_bucket.ls("hierdrums/run") if p.endswith(".tmp")] == []
