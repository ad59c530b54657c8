"""The `metrics` stage on real Zarr stores: layout, agreement with kernels.reference, atomicity."""

from __future__ import annotations


import numpy as np
import pytest
import zarr

import kernels.reference as ref
from kernels.spec import EXPRESSIVE_SCHEMA, SECTION_SCHEMA, SONG_SCHEMA, WINDOW_SCHEMA
from common.config import compose
from pipeline.metrics import run
from pipeline.store import Song, write_store

D = 9

ATTRS = {"drum_names": [f"d{i}" for i in range(D)], "drum_pitches": list(range(36, 36 + D)),
         "mapping": "test", "steps_per_quarter": 4, "source_hash": "x"}

def _song(name, T, rng, spb=16, bpb=4, density=0.25, sections=None):
    hits = (rng.random((T, D)) < density).astype(np.uint8)
    vel = hits * rng.integers(1, 128, hits.shape).astype(np.uint8)
    off = (hits * rng.integers(-64, 65, hits.shape)).astype(np.int8)
    return Song(name=name, hits=hits, velocity=vel, offset=off, source=f"{name}.mid", split="train",
                steps_per_bar=spb, beats_per_bar=bpb,
                sections=np.zeros((0, 2), np.int64) if sections is None else np.array(sections))

@pytest.fixture()
def small_store(tmp_path):
    rng = np.random.default_rng(7)
    songs = [_song("a", 200, rng), _song("short", 40, rng), _song("empty", 0, rng),
             _song("waltz", 150, rng, spb=12, bpb=3, sections=[[0, 60], [60, 150]]),
             _song("exact", 64, rng, density=1.0)]
    path = tmp_path / "store.zarr"
    write_store(path, songs, ATTRS, chunk_steps=64)
    return path, songs

def _cfg(tmp_path, store, *extra):
    return compose([f"paths.store={store}", f"paths.metrics={tmp_path / 'metrics.zarr'}",
                    "window.seq_len=64", "window.stride=3", "metrics.steps_per_bar=16",
                    "metrics.bars_per_phrase=2", "metrics.block_steps=250", "metrics.block_windows=40",
                    "metrics.chunk_windows=16", "metrics.num_workers=2", *extra])

def test_stage_layout_and_values_match_reference(tmp_path, small_store):
    store_path, songs = small_store
    summary = run(_cfg(tmp_path, store_path))
    out = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")
    starts = {s.name: ref.window_metrics(s.hits, seq_len=64, stride=3, steps_per_bar=s.steps_per_bar,
                                         beats_per_bar=s.beats_per_bar, num_bars=4, ioi_bins=16,
                                         bars_per_phrase=2)
              for s in songs}
    expected_w = sum(len(v["avg_hits"]) for v in starts.values())
    # 200 steps: starts 0..136 by 3 -> 46; short: 1; empty: 0; waltz 150: 29; exact 64: 1
    assert expected_w == 46 + 1 + 0 + 29 + 1
    assert summary["windows"] == expected_w and summary["errors"] == []
    song_ids = out["window/song"][:]
    np.testing.assert_array_equal(song_ids, np.repeat([0, 1, 3, 4], [46, 1, 29, 1]))
    np.testing.assert_array_equal(out["window/start"][:46], np.arange(0, 137, 3))
    np.testing.assert_array_equal(out["window/length"][:], np.repeat([64, 40, 64, 64], [46, 1, 29, 1]))
    for name, (dtype, _) in WINDOW_SCHEMA.items():
        stored = out[f"window/{name}"][:]
        assert stored.dtype == np.dtype(dtype)
        want = np.concatenate([starts[s.name][name] for s in songs])
        np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-6, err_msg=name)
    played = {s.name: ref.expressive_metrics(s.hits, s.velocity, s.offset, seq_len=64, stride=3,
                                             steps_per_bar=s.steps_per_bar, beats_per_bar=s.beats_per_bar,
                                             positions=16) for s in songs}
    for name, (dtype, _) in EXPRESSIVE_SCHEMA.items():   # velocity and timing come from the store too
        stored = out[f"window/{name}"][:]
        assert stored.dtype == np.dtype(dtype)
        want = np.concatenate([played[s.name][name] for s in songs])
        np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-5, err_msg=name)
    assert out["window/accent"].shape == (expected_w, 16)
    assert (out["window/vel_std"][:] > 0).any() and (out["window/offset_mean"][:] != 0).any()
    assert out["window/bar_hits"].shape == (expected_w, 4)      # 64 // configured 16, also for 3/4
    assert out["window/ioi_hist"].shape == (expected_w, 16)
    for name in SONG_SCHEMA:
        want = np.stack([ref.song_metrics(s.hits, steps_per_bar=s.steps_per_bar, bars_per_phrase=2)[name]
                         for s in songs])
        np.testing.assert_allclose(out[f"song/{name}"][:], want, rtol=1e-9, err_msg=name)
    # sections: stored ones for the waltz, one per phrase (last partial) elsewhere
    sec_song, sec_start = out["section/song"][:], out["section/start"][:]
    np.testing.assert_array_equal(sec_start[sec_song == 3], [0, 60])
    np.testing.assert_array_equal(out["section/end"][:][sec_song == 0], [32, 64, 96, 128, 160, 192, 200])
    want = ref.section_metrics(songs[3].hits, [[0, 60], [60, 150]], steps_per_bar=12, bars_per_phrase=2)
    for name in SECTION_SCHEMA:
        np.testing.assert_allclose(out[f"section/{name}"][:][sec_song == 3], want[name], rtol=1e-9)
    bar_off = out["bar/offsets"][:]
    np.testing.assert_array_equal(np.diff(bar_off), [12, 2, 0, 12, 4])           # waltz: 150 // 12
    np.testing.assert_allclose(out["bar/mean"][bar_off[3]:bar_off[4]], ref.bar_means(songs[3].hits, steps_per_bar=12))
    np.testing.assert_array_equal(np.diff(out["phrase/offsets"][:]), [6, 1, 0, 6, 2])
    attrs = dict(out.attrs)
    assert attrs["seq_len"] == 64 and attrs["stride"] == 3 and attrs["ngram_n"] == 4
    assert attrs["metric_names"]["window"] == list(WINDOW_SCHEMA) + list(EXPRESSIVE_SCHEMA)
    assert len(attrs["store_hash"]) == 64

def test_bad_song_is_reported_and_the_rest_still_written(tmp_path):
    rng = np.random.default_rng(1)
    songs = [_song("good", 100, rng), _song("odd_meter", 100, rng, spb=10, bpb=4), _song("good2", 80, rng)]
    write_store(tmp_path / "store.zarr", songs, ATTRS)
    summary = run(_cfg(tmp_path, tmp_path / "store.zarr"))
    assert len(summary["errors"]) == 1
    assert "odd_meter" in summary["errors"][0] and "whole number of beats" in summary["errors"][0]
    out = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")
    ids = out["window/song"][:]
    assert set(ids.tolist()) == {0, 2} and len(ids) == out["window/avg_hits"].shape[0] == 13 + 6
    assert out.attrs["errors"] == summary["errors"]
