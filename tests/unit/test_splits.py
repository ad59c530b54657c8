"""The tune split: carved out of train per style x beat_type, deterministic by song, and what the
choices read (the export's tune windows, else validation with a warning)."""
import json
import logging
from collections import Counter

import numpy as np
import pytest

from pipeline.splits import TUNE, TuneSplit, monitored_split


def _records(n=400, seed=0):
    rng = np.random.default_rng(seed)
    styles, kinds = ["funk/groove1", "funk/groove2", "jazz", "rock"], ["beat", "fill"]
    return [{"name": f"d{i % 7}/s{i}", "style": styles[rng.integers(4)], "beat_type": kinds[rng.integers(2)],
             "split": ["train", "train", "train", "validation", "test"][rng.integers(5)]} for i in range(n)]


def test_tune_is_a_tenth_of_train_in_every_stratum_and_nothing_else():
    recs = _records()
    tune = TuneSplit(recs, 0.1)
    out = [tune.assign(r) for r in recs]
    before = Counter((r["style"].split("/")[0], r["beat_type"]) for r in recs if r["split"] == "train")
    after = Counter((r["style"].split("/")[0], r["beat_type"]) for r in out if r["split"] == TUNE)
    assert after == {k: round(0.1 * n) for k, n in before.items() if round(0.1 * n)}
    # only train songs move; validation and test stay as they were
    assert all(o["split"] == r["split"] for r, o in zip(recs, out) if r["split"] != "train")
    assert sum(o["split"] == TUNE for o in out) == sum(after.values()) > 20


def test_tune_is_deterministic_by_song_whatever_the_order():
    recs = _records()
    a = TuneSplit(recs, 0.1).names
    b = TuneSplit(list(reversed(recs)), 0.1).names
    assert a == b and TuneSplit(recs, 0.0).names == set()
    with pytest.raises(ValueError, match="tune_share"):
        TuneSplit(recs, 1.0)


def test_choices_read_tune_when_the_export_has_it_else_validation(tmp_path, caplog, monkeypatch):
    # an in-process Hydra app earlier in the session may have configured logging away from this logger
    monkeypatch.setattr(logging.getLogger("pipeline.splits"), "disabled", False)
    caplog.set_level(logging.WARNING, logger="pipeline.splits")
    (tmp_path / "manifest.json").write_text(json.dumps({"windows": {"train": 5, "validation": 2, "tune": 1}}))
    assert monitored_split(tmp_path, "tune") == "tune"
    (tmp_path / "manifest.json").write_text(json.dumps({"windows": {"train": 5, "validation": 2, "tune": 0}}))
    assert monitored_split(tmp_path, "tune") == "validation" and "no windows in the 'tune' split" in caplog.text


def test_build_carves_tune_and_export_writes_its_windows(tmp_path):
    from common.config import compose
    from pipeline.build import build
    from pipeline.export import export
    from pipeline.ingest import ingest
    from pipeline.store import Store
    from tests.ready_data import write_metrics

    cfg = compose(["data=builtin", "data.corpus.num_songs=24", "data.corpus.seed=3", "data.corpus.styles=[rock]",
                   "ingest.split_ratios={train: 1.0, validation: 0.0, test: 0.0}", "ingest.tune_share=0.25",
                   f"paths.data_dir={tmp_path / 'out'}", "ingest.scheduler=synchronous"])
    ingest(cfg), build(cfg)
    store = Store(tmp_path / "out" / "store.zarr")
    assert store.attrs["splits"] == {"train": 18, "validation": 0, "test": 0, "tune": 6}
    write_metrics(store.path, tmp_path / "m.zarr", seq_len=64, stride=64)
    export(store.path, tmp_path / "m.zarr", tmp_path / "ready", seq_len=64, stride=64)
    manifest = json.loads((tmp_path / "ready" / "manifest.json").read_text())
    assert manifest["windows"]["tune"] > 0
    assert len(np.load(tmp_path / "ready" / "windows_tune.npy")) == manifest["windows"]["tune"]
