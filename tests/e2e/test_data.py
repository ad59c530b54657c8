"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The memory-mapped data path: export stage, dataset items/batches, augmentation, workers.
The rest is tests/unit/test_data.py."""

import numpy as np
import pytest
import zarr

from pipeline.drums import DrumMap
from pipeline.export import export
from pipeline.store import Store, write_store
from tests.ready_data import build_ready, make_songs
from tests.unit.test_data import BPP, LENGTHS, SEQ, SPB, SPLITS, STRIDE, _dataset, _expected, ready  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_stale_metrics_are_refused_and_nothing_is_written(tmp_path):
    build_ready(tmp_path, make_songs([300, 50]), seq_len=SEQ, stride=STRIDE)
    before = (tmp_path / "ready" / "hits.npy").read_bytes()
    win = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r+")["window"]
    win["start"][1] = 17                                        # a window off the stride grid
    with pytest.raises(ValueError, match="metrics.zarr: its windows .* the metrics are stale"):
        export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready")
    assert (tmp_path / "ready" / "hits.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.zarr", "ready", "store.zarr"]
    attrs = {**DrumMap.default().to_attrs(), "source_hash": "test-hash"}
    write_store(tmp_path / "store.zarr", make_songs([300, 70], seed=1), attrs)   # store rebuilt
    with pytest.raises(ValueError, match="computed from a store with hash"):
        export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready")
    with pytest.raises(ValueError, match="rerun `dvc repro export`"):
        _dataset(tmp_path)       # the export no longer matches the store beside it


def test_augmentation_shifts_whole_bars_within_the_song(ready):
    store = Store(ready / "store.zarr")
    ds = _dataset(ready, augment=True, velocity_jitter=0.3, max_shift_bars=4)
    idx = np.tile(np.arange(len(ds)), 4)
    batch = {k: v if k == "metrics" else v.numpy() for k, v in ds.get_batch(idx, seed=(7, 1)).items()}
    again = ds.get_batch(idx, seed=(7, 1))
    for k in batch:
        if k != "metrics":
            np.testing.assert_array_equal(batch[k], again[k])
    orig = ds.windows[idx]
    shift = batch["start"] - orig[:, 2]
    assert (shift % SPB == 0).all() and (np.abs(shift) <= 4 * SPB).all() and (shift != 0).mean() > 0.5
    assert (batch["song"] == orig[:, 1]).all()
    T = np.diff(store.song_offsets)[batch["song"]]
    assert (batch["start"] >= 0).all() and (batch["start"] + np.minimum(T, SEQ) <= T).all()   # never wraps
    for b in range(len(idx)):
        hits, vel, _ = _expected(store, batch["song"][b], batch["start"][b])
        np.testing.assert_array_equal(batch["step"][b], hits)
        np.testing.assert_array_equal(batch["velocity"][b] > 0, hits > 0)      # jitter keeps the hits
    assert not np.array_equal(batch["velocity"], ds.get_batch(idx)["velocity"].numpy())
    assert batch["velocity"].dtype == np.uint8 and batch["velocity"].max() <= 127
    # metrics follow the window actually returned
    metrics = zarr.open_group(str(ready / "metrics.zarr"), mode="r")
    rows = [np.flatnonzero((metrics["window/song"][:] == s) & (metrics["window/start"][:] == a))[0]
            for s, a in zip(batch["song"], batch["start"])]
    np.testing.assert_array_equal(batch["metrics"]["avg_hits"], metrics["window/avg_hits"][:][rows])
