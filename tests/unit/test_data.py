"""The memory-mapped data path: export stage, dataset items/batches, augmentation, workers."""

import json
import logging
import pickle
import threading

import numpy as np
import pytest
import torch
import zarr

from pipeline.export import export
from pipeline.metrics import store_hash
from pipeline.store import Store
from tests.ready_data import build_ready, make_songs
from train.training.data import CompleteHierarchicalDrumDataset, get_complete_rl_dataloader, make_loader

SEQ, STRIDE, SPB, BPP = 128, 16, 16, 4

LENGTHS = [300, 40, 0, 1000, 128, 17, 200]

SPLITS = ["train", "train", "train", "train", "validation", "train", "test"]

@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    root = tmp_path_factory.mktemp("ready")
    build_ready(root, make_songs(LENGTHS, splits=SPLITS), seq_len=SEQ, stride=STRIDE)
    return root

def _dataset(root, split="train", **kw):
    """Every field and the bar/phrase levels (most tests check them); the default gathers less."""
    kw = {"fields": ("velocity",), "levels": ("bar", "phrase"), **kw}
    return CompleteHierarchicalDrumDataset(root / "store.zarr", split, SEQ, STRIDE, SPB, BPP, **kw)

def _expected(store, song, start, seq_len=SEQ):
    sl = store.song_slice(int(song))
    hits = np.zeros((seq_len, store.num_drums), np.uint8)
    vel = np.zeros_like(hits)
    part = store.hits[sl][start:start + seq_len]
    hits[:len(part)] = part
    vel[:len(part)] = store.velocity[sl][start:start + seq_len]
    return hits, vel, len(part)

def test_export_copies_store_rows_and_metric_rows(ready):
    store = Store(ready / "store.zarr")
    hits = np.load(ready / "ready" / "hits.npy", mmap_mode="r")
    assert isinstance(hits, np.memmap) and hits.dtype == np.uint8
    np.testing.assert_array_equal(hits, store.hits[:])
    np.testing.assert_array_equal(np.load(ready / "ready" / "velocity.npy"), store.velocity[:])
    metrics = zarr.open_group(str(ready / "metrics.zarr"), mode="r")
    np.testing.assert_array_equal(np.load(ready / "ready" / "metrics" / "drum_density.npy"),
                                  metrics["window/drum_density"][:])
    manifest = json.loads((ready / "ready" / "manifest.json").read_text())
    # windows: 300 -> 11, 40 -> 1, 0 -> 0, 1000 -> 55, 128 -> 1, 17 -> 1, 200 -> 5
    assert manifest["windows"] == {"train": 11 + 1 + 55 + 1, "validation": 1, "test": 5, "tune": 0}
    assert {"avg_hits", "bar_hits", "drum_density", "transitions", "ioi_hist"} <= set(manifest["metric_names"])
    assert manifest["store_hash"] == store_hash(store) and manifest["songs_without_windows"] == 0

def test_batch_equals_store_slices_and_metric_rows(ready):
    ds = _dataset(ready)
    store = Store(ready / "store.zarr")
    metrics = zarr.open_group(str(ready / "metrics.zarr"), mode="r")
    assert len(ds) == 68
    idx = np.arange(len(ds))[::-1].copy()
    batch = make_loader(ds, batch_size=len(ds), shuffle=False).dataset[idx]
    win_song, win_start = metrics["window/song"][:], metrics["window/start"][:]
    for b in range(len(idx)):
        song, start = int(batch["song"][b]), int(batch["start"][b])
        hits, vel, n = _expected(store, song, start)
        np.testing.assert_array_equal(batch["step"][b], hits.astype(np.float32))
        np.testing.assert_array_equal(batch["velocity"][b], vel)
        assert batch["mask"][b].sum() == n and batch["mask"][b][:n].all()
        bar = hits.astype(np.float32).reshape(SEQ // SPB, SPB, -1).mean(1)
        np.testing.assert_allclose(batch["bar"][b], bar, rtol=1e-6)
        np.testing.assert_allclose(batch["phrase"][b], bar.reshape(-1, BPP, hits.shape[1]).mean(1), rtol=1e-6)
        row = np.flatnonzero((win_song == song) & (win_start == start))
        assert len(row) == 1
        for name in ds.metric_names:
            np.testing.assert_array_equal(batch["metrics"][name][b], metrics[f"window/{name}"][row[0]])
        # and the row is this window's: avg_hits = H / L of the slice itself (the window metrics' definition, docs/metrics.md)
        np.testing.assert_allclose(batch["metrics"]["avg_hits"][b], hits.sum() / n, rtol=1e-6)
        np.testing.assert_allclose(batch["metrics"]["drum_density"][b], hits.sum(0) / n, rtol=1e-6)
    assert batch["metrics"]["drum_density"].shape == (len(ds), 9)

def test_collated_batch_is_flat_tensors(ready):
    loader = make_loader(_dataset(ready), batch_size=8, shuffle=True, seed=3)
    batch = next(iter(loader))
    assert batch["step"].dtype == torch.float32 and batch["step"].shape == (8, SEQ, 9)
    assert batch["bar"].shape == (8, SEQ // SPB, 9) and batch["phrase"].shape == (8, SEQ // (SPB * BPP), 9)
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (8, SEQ)
    manifest = json.loads((ready / "ready" / "manifest.json").read_text())
    assert set(batch["metrics"]) == set(manifest["metric_names"])
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 8 for v in batch["metrics"].values())
    assert batch["song"].dtype == torch.int64 and batch["start"].shape == (8,)
    item = _dataset(ready)[0]
    assert item["step"].shape == (SEQ, 9) and item["metrics"]["avg_hits"].shape == ()

def test_short_songs_are_padded_with_mask(ready):
    ds = _dataset(ready)
    short = np.flatnonzero(ds.windows[:, 3] < SEQ)        # LENGTH column
    assert sorted(ds.windows[short, 3].tolist()) == [17, 40]
    batch = ds[short]
    for b, n in enumerate(ds.windows[short, 3]):
        assert batch["mask"][b].sum() == n and not batch["mask"][b][n:].any()
        assert not batch["step"][b][n:].any() and not batch["velocity"][b][n:].any()
        assert batch["bar_mask"][b].sum() == n // SPB and not batch["phrase_mask"][b].any()
    assert batch["start"].tolist() == [0, 0]

def test_window_config_mismatch_is_a_clear_error(ready):
    with pytest.raises(ValueError, match=r"seq_len=128, stride=16; requested seq_len=256"):
        CompleteHierarchicalDrumDataset(ready / "store.zarr", "train", 256, 16)
    with pytest.raises(ValueError, match="requested seq_len=128, stride=32"):
        CompleteHierarchicalDrumDataset(ready / "ready", "train", 128, 32)
    with pytest.raises(ValueError, match="metrics were computed with seq_len=128"):
        export(ready / "store.zarr", ready / "metrics.zarr", ready / "other", seq_len=64, stride=16)
    assert not (ready / "other").exists()

def test_songs_the_metrics_stage_skipped_are_left_out(tmp_path, caplog):
    build_ready(tmp_path, make_songs([300, 50, 200]), seq_len=SEQ, stride=STRIDE)
    metrics = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r+")
    keep = metrics["window/song"][:] != 0                       # as if song 0's kernels had failed
    for name in list(metrics["window"].array_keys()):
        data = metrics[f"window/{name}"][:][keep]
        del metrics["window"][name]
        metrics["window"].create_array(name, data=data)
    with caplog.at_level(logging.WARNING, logger="pipeline.export"):
        manifest = export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready")
    assert manifest["songs_without_windows"] == 1 and "1 songs of" in caplog.text
    ds = _dataset(tmp_path)
    assert set(ds.windows[:, 1].tolist()) == {1, 2} and len(ds) == 1 + 5

def test_every_bar_length_is_read_and_batches_hold_one_meter(tmp_path):
    """A 3/4 (12-step) song is read beside the 16-step ones (none left out); each window carries
    its song's bar length; make_loader's batches never mix meters; the model trains on both."""
    from train.model import HierarchicalDrumModel

    songs = make_songs([200, 192, 64], steps_per_bar=[16, 12, 16])
    build_ready(tmp_path, songs, seq_len=64, stride=16)
    ds = CompleteHierarchicalDrumDataset(tmp_path / "ready", "train", 64, 16, 16, 4, levels=("bar",))
    every = np.load(tmp_path / "ready" / "windows_train.npy")
    assert len(ds) == len(every) == 9 + 9 + 1 and set(ds.windows[:, 1].tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(ds.window_bar_lengths, np.where(every[:, 1] == 1, 12, 16))
    assert ds.bar_lengths == [12, 16]
    loader = make_loader(ds, 4, seed=3)
    model = HierarchicalDrumModel.from_config(dict(
        num_drums=ds.num_drums, step_hidden_dim=8, bar_hidden_dim=8, phrase_hidden_dim=8, num_layers=1, dropout=0.0,
        steps_per_bar=16, bars_per_phrase=4, max_steps_per_bar=16))
    seen = []
    for batch in loader:
        spb = batch["steps_per_bar"].unique().tolist()
        assert len(spb) == 1 and batch["bar"].shape[1] == 64 // spb[0]
        assert set(spb) == {12 if s == 1 else 16 for s in batch["song"].tolist()}
        preds = model(batch["step"], mask=batch["mask"], start=batch["start"], steps_per_bar=batch["steps_per_bar"])
        assert preds[1].shape[1] == (64 + int((batch["start"] % spb[0]).max())) // spb[0]
        total, _ = model.compute_loss(preds, batch)
        assert torch.isfinite(total)
        seen += batch["song"].tolist()
    assert sorted(seen) == sorted(every[:, 1].tolist())      # every window once, no meter dropped
    with pytest.raises(ValueError, match="mixes bar lengths"):
        ds[[0, 10]]                                          # a hand-picked batch of two meters

def test_augmentation_shift_respects_its_bound(ready):
    idx = np.arange(len(_dataset(ready)))
    still = _dataset(ready, augment=True, max_shift_bars=0).get_batch(idx, seed=(7, 1))
    assert (still["start"].numpy() == _dataset(ready).windows[idx][:, 2]).all()
    one = _dataset(ready, augment=True, max_shift_bars=1).get_batch(np.tile(idx, 4), seed=(7, 1))
    shift = one["start"].numpy() - _dataset(ready).windows[np.tile(idx, 4)][:, 2]
    assert set(np.unique(shift).tolist()) <= {-SPB, 0, SPB} and (shift != 0).any()

def test_dataset_pickles_small_and_reopens(ready):
    ds = _dataset(ready, augment=True)
    ds[[0, 1]]                           # maps are open in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 4000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone[[3, 4]]["step"], ds[[3, 4]]["step"])

def test_thread_workers_give_the_same_batches_as_none(ready):
    ds = _dataset(ready, augment=True, velocity_jitter=0.2)
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, batch_size=16, shuffle=True, seed=5, num_workers=workers)
        loader.sampler.set_epoch(2)
        runs.append(list(loader))
    assert [len(r) for r in runs] == [5, 5]
    for a, b in zip(*runs):
        for k in ("step", "velocity", "bar", "phrase", "mask", "bar_mask", "song", "start"):
            assert torch.equal(a[k], b[k]), k
        for k in a["metrics"]:
            assert torch.equal(a["metrics"][k], b["metrics"][k]), k
    # the thread batches are private tensors: one batch's storage is not reused for the next
    thread_run = runs[1]
    assert thread_run[0]["step"].untyped_storage().data_ptr() != thread_run[1]["step"].untyped_storage().data_ptr()

def test_a_batch_gathers_only_what_is_asked_for(ready):
    """Default: step, mask, song, start, steps_per_bar and the window metrics named; levels and
    fields on request."""
    plain = CompleteHierarchicalDrumDataset(ready / "store.zarr", "train", SEQ, STRIDE, SPB, BPP,
                                            metrics=["avg_hits"])
    batch = plain[[0, 5]]
    assert set(batch) == {"step", "mask", "song", "start", "steps_per_bar", "metrics"}
    assert set(batch["metrics"]) == {"avg_hits"} and batch["steps_per_bar"].tolist() == [SPB, SPB]
    assert "velocity" not in plain._open()                       # not even mapped
    full = _dataset(ready, levels=("bar", "phrase", "song"), metrics=[])
    rich = full[[0, 5]]
    torch.testing.assert_close(rich["step"], batch["step"])
    assert rich["metrics"] == {} and {"velocity", "bar", "bar_mask", "phrase", "phrase_mask"} <= set(rich)
    song_table = zarr.open_group(str(ready / "metrics.zarr"), mode="r")["song"]
    for name in ("avg_hits", "step_entropy"):
        np.testing.assert_array_equal(rich["song_metrics"][name], song_table[name][:][rich["song"].numpy()])
    assert "section" not in full._open() and "section" not in rich    # a level nobody asked for
    with pytest.raises(ValueError, match=r"levels \['verse'\] unknown"):
        _dataset(ready, levels=("verse",))

def test_the_section_level_is_each_steps_section_in_the_metrics_store(tmp_path):
    """levels=("section",): per step, the row of metrics.zarr section/ whose [start, end) holds it
    (the later one where sections overlap, -1 in a gap and on padding), and that row's metrics."""
    songs = make_songs([300, 200, 150, 40], seed=3)
    songs[0].sections = np.array([[0, 100], [100, 180], [200, 300]])      # a gap at 180..200
    songs[2].sections = np.array([[0, 100], [50, 150]])                   # overlapping
    build_ready(tmp_path, songs, seq_len=SEQ, stride=STRIDE)             # songs 1, 3: one section a phrase
    ds = _dataset(tmp_path, levels=("section",), fields=())
    batch = ds[np.arange(len(ds))]
    table = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")["section"]
    sec_song, sec_start, sec_end = (table[k][:] for k in ("song", "start", "end"))
    expected = np.full((len(ds), SEQ), -1)
    for b, (song, start) in enumerate(zip(batch["song"].tolist(), batch["start"].tolist())):
        for j in range(int(batch["mask"][b].sum())):
            inside = np.flatnonzero((sec_song == song) & (sec_start <= start + j) & (start + j < sec_end))
            expected[b, j] = inside.max() if len(inside) else -1
    np.testing.assert_array_equal(batch["section"].numpy(), expected)
    assert ((expected == -1) & batch["mask"].numpy()).any()              # the gap: real steps in no section
    overlap = np.flatnonzero((sec_song == 2) & (sec_start == 50))         # song 2's steps 50..99: the later one
    assert overlap.size == 1 and (expected == overlap[0]).sum() > 0 and len(set(expected.ravel())) > 8
    assert set(batch["section_metrics"]) == {"avg_hits", "dense_frac", "drum_density", "max_hits"}
    for name, got in batch["section_metrics"].items():
        want = table[name][:][np.maximum(expected, 0)]
        want[expected < 0] = 0
        np.testing.assert_array_equal(got.numpy(), want)
    assert batch["section_metrics"]["drum_density"].shape == (len(ds), SEQ, 9)

def test_a_metric_that_was_not_exported_is_a_clear_error(tmp_path):
    build_ready(tmp_path, make_songs([300, 50]), seq_len=SEQ, stride=STRIDE, metric_names=["avg_hits"])
    with pytest.raises(ValueError, match=r"\['ioi_var'\] were not exported.*export.metrics"):
        CompleteHierarchicalDrumDataset(tmp_path / "ready", "train", SEQ, STRIDE, SPB, BPP,
                                        metrics=["avg_hits", "ioi_var"])

def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("WindowLoader")]

def test_thread_workers_are_joined_at_epoch_end_on_break_and_on_error(ready):
    loader = make_loader(_dataset(ready), batch_size=8, seed=2, num_workers=2)
    assert loader.threaded and loader.num_workers == 0       # no torch worker processes
    it = iter(loader)
    next(it)
    assert 1 <= len(_loader_threads()) <= 2                  # prefetching while the loop works (the pool
                                                             # starts a second thread only if the first is busy)
    assert len(list(it)) == len(loader) - 1
    assert _loader_threads() == []                           # end of epoch
    for n, _ in enumerate(loader):
        if n == 1:
            break
    assert _loader_threads() == []                           # break closes the iterator
    with pytest.raises(RuntimeError, match="training step failed"):
        for n, _ in enumerate(loader):
            if n == 2:
                raise RuntimeError("training step failed")
    assert _loader_threads() == []
    # the break left the epoch at 2 batches, the failed loop resumed there and took 3: delivered, not prefetched
    assert loader.sampler.position == 5

def test_a_failing_gather_in_a_thread_reaches_the_loop_and_stops_the_threads(ready):
    ds = _dataset(ready)
    loader = make_loader(ds, batch_size=8, seed=2, num_workers=2)
    loader.sampler.num_windows = len(ds) + 50                # batches past the end: IndexError in a thread
    with pytest.raises(IndexError, match="window index out of range"):
        list(loader)
    assert _loader_threads() == []

def test_get_complete_rl_dataloader_from_a_store(ready):
    loader = get_complete_rl_dataloader(ready / "store.zarr", seq_len=SEQ, steps_per_bar=SPB, bars_per_phrase=BPP,
                                        batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["step"].shape == (4, SEQ, 9) and batch["start"].tolist() == [0, 16, 32, 48]
    assert len(loader) == -(-68 // 4)
    with pytest.raises(ValueError, match="requested seq_len=512"):
        get_complete_rl_dataloader(ready / "ready")              # the seed's default seq_len
    with pytest.raises(FileNotFoundError, match="no \\*.npz files"):
        get_complete_rl_dataloader(ready / "ready" / "metrics", seq_len=SEQ)

def test_a_batch_feeds_the_model_and_its_loss(ready):
    from train.model import HierarchicalDrumModel, compute_loss

    batch = next(iter(make_loader(_dataset(ready), batch_size=4, seed=1)))
    model = HierarchicalDrumModel.from_config(dict(num_drums=9, step_hidden_dim=16, bar_hidden_dim=16,
                                                    phrase_hidden_dim=16, num_layers=1, steps_per_bar=SPB,
                                                    bars_per_phrase=BPP))
    preds = model(batch["step"], mask=batch["mask"])
    assert preds[0].shape == (4, SEQ, 9)
    total, terms = compute_loss(preds, batch, steps_per_bar=SPB, bars_per_phrase=BPP)
    assert torch.isfinite(total) and set(terms) == {"step", "bar", "phrase"} and terms["step"] > 0
