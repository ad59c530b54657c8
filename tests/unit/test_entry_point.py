"""get_complete_rl_dataloader from an NPZ folder: ingest -> build -> metrics -> export, cached by content."""
import os

import numpy as np

from common.config import compose
from pipeline.store import Store
from train.training.data import get_complete_rl_dataloader

SEQ = 64


def _write_rolls(folder, n=8, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rolls = {}
    for i in range(n):
        roll = np.where(rng.random((96 + 37 * i, 9)) < 0.2, rng.integers(1, 128, (96 + 37 * i, 9)), 0)
        np.savez(folder / f"roll{i}.npz", sequence=roll.astype(np.float32))
        rolls[f"roll{i}"] = roll
    return rolls


def test_npz_folder_builds_once_and_batches_match_the_files(tmp_path):
    rolls = _write_rolls(tmp_path / "rolls")
    cache = tmp_path / "cache"
    loader = get_complete_rl_dataloader(tmp_path / "rolls", seq_len=SEQ, batch_size=4, shuffle=False,
                                        cache_dir=cache)
    (key,) = [p for p in cache.iterdir() if p.is_dir()]
    store = Store(key / "store.zarr")
    ds = loader.dataset
    # the export holds what training reads (export.metrics), and the batch gathers those
    assert len(ds) > 0 and set(ds.metric_names) == set(compose([]).export.metrics) == {"avg_hits", "syncopation",
                                                                                       "ioi_var"}
    seen = 0
    for batch in loader:
        for b in range(len(batch["song"])):
            name = os.path.splitext(os.path.basename(str(store.meta["source"][int(batch["song"][b])])))[0]
            start, n = int(batch["start"][b]), int(batch["mask"][b].sum())
            want = rolls[name][start:start + n] > 0
            np.testing.assert_array_equal(batch["step"][b][:n].numpy(), want.astype(np.float32))
            np.testing.assert_allclose(batch["metrics"]["avg_hits"][b], want.sum() / n, rtol=1e-5)
            seen += 1
    assert seen == len(ds)
    manifest = key / "ready" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = get_complete_rl_dataloader(tmp_path / "rolls", seq_len=SEQ, batch_size=4, cache_dir=cache)
    assert again.dataset.ready == ds.ready and manifest.stat().st_mtime_ns == stamp      # reused
    _write_rolls(tmp_path / "rolls", seed=1)                                              # files changed
    rebuilt = get_complete_rl_dataloader(tmp_path / "rolls", seq_len=SEQ, batch_size=4, cache_dir=cache)
    assert rebuilt.dataset.ready != ds.ready and len([p for p in cache.iterdir() if p.is_dir()]) == 2
