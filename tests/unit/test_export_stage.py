"""The `export` stage under real DVC: `dvc repro -s export` writes data/ready, a second run is a no-op."""

from pathlib import Path

from tests.ready_data import make_songs, write_metrics
from pipeline.drums import DrumMap
from pipeline.store import write_store

REPO = Path(__file__).resolve().parents[2]

def test_default_export_is_compact_and_exact(tmp_path):
    """The configured metrics only, each in the narrowest exact dtype, int32 window tables:
    ready/ within 1.5x the raw roll bytes (hit, velocity, offset); values equal to the metrics store's."""
    import numpy as np
    import zarr

    from common.config import compose
    from pipeline.export import export

    attrs = {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "h1"}
    write_store(tmp_path / "store.zarr", make_songs([2000, 700, 300, 1500]), attrs)
    write_metrics(tmp_path / "store.zarr", tmp_path / "metrics.zarr", seq_len=256, stride=16)
    names = list(compose([]).export.metrics)
    manifest = export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready",
                      seq_len=256, stride=16, metric_names=names + ["max_hits", "bar_hits"])
    ready = tmp_path / "ready"
    assert sorted(p.stem for p in (ready / "metrics").iterdir()) == sorted(names + ["max_hits", "bar_hits"])
    win = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")["window"]
    for name in manifest["metric_names"]:
        got = np.load(ready / "metrics" / f"{name}.npy")
        np.testing.assert_array_equal(got, win[name][:])          # exact, whatever the dtype
        assert manifest["metrics"][name]["dtype"] == got.dtype.str
    assert np.load(ready / "metrics" / "max_hits.npy").dtype == np.uint8     # int32 counts <= 9
    assert np.load(ready / "metrics" / "bar_hits.npy").dtype == np.uint8     # uint16, <= 16 * 9 here
    assert np.load(ready / "windows_train.npy").dtype == np.int32
    raw = 3 * 4500 * 9   # the raw roll: hits, velocity and offset, one byte per step and drum each
    ready_bytes = sum(p.stat().st_size for p in ready.rglob("*") if p.is_file())
    assert ready_bytes <= 1.5 * raw, (ready_bytes, raw)
