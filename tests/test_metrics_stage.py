"""The `metrics` stage on real Zarr stores: layout, agreement with kernels.reference, atomicity."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

import kernels.reference as ref
from kernels.spec import EXPRESSIVE_SCHEMA, SECTION_SCHEMA, SONG_SCHEMA, WINDOW_SCHEMA, window_grid
from common.config import REPO_ROOT, compose
from pipeline.metrics import run
from pipeline.store import Song, Store, content_hash, write_store

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


def test_failed_run_leaves_previous_output_in_place(tmp_path, small_store, monkeypatch):
    store_path, _ = small_store
    run(_cfg(tmp_path, store_path))
    before = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")["window/avg_hits"][:]

    def crash(*args, **kwargs):                 # dies after every table is written
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.metrics._finish", crash)
    with pytest.raises(OSError, match="disk full"):
        run(_cfg(tmp_path, store_path, "window.stride=1"))
    after = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")["window/avg_hits"][:]
    np.testing.assert_array_equal(before, after)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_partitions_and_schedulers_do_not_change_the_output(tmp_path, small_store):
    """One partition in this thread, or one song per partition on threads and on processes: the
    same content, byte for byte (what an out-of-order or misplaced write would break)."""
    store_path, _ = small_store
    hashes = []
    for i, extra in enumerate([("metrics.block_steps=100000", "metrics.block_windows=100000",
                                "metrics.scheduler=synchronous", "metrics.chunk_windows=1000"),
                               ("metrics.block_steps=1", "metrics.scheduler=threads"),
                               ("metrics.block_steps=1", "metrics.scheduler=processes")]):
        cfg = _cfg(tmp_path, store_path, f"paths.metrics={tmp_path / f'm{i}.zarr'}", *extra)
        run(cfg)
        hashes.append(content_hash(cfg.paths.metrics))
    assert hashes[0] == hashes[1] == hashes[2]
    out = zarr.open_group(str(tmp_path / "m1.zarr"), mode="r")
    assert out["window/avg_hits"].chunks == (16,) and out["window/song"].shape == (77,)


def test_cli_runs_as_a_module(tmp_path, small_store):
    store_path, _ = small_store
    proc = subprocess.run([sys.executable, "-m", "pipeline.metrics", f"paths.store={store_path}",
                           f"paths.metrics={tmp_path / 'm.zarr'}", "window.seq_len=32",
                           "window.stride=16", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["windows"] == 11 + 1 + 0 + 8 + 3        # (T - 32) // 16 + 1 per song, short: 1
    assert zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["window/song"].shape == (summary["windows"],)


def _check_sample(out, store: Store, cfg, rng, num=40):
    """Stored rows equal kernels.reference recomputed on the window's own song, for a sample."""
    W = out["window/song"].shape[0]
    m = cfg.metrics
    for w in sorted(rng.choice(W, size=min(num, W), replace=False)):
        i, a, L = (int(out[f"window/{k}"][w]) for k in ("song", "start", "length"))
        song = store.song(i)
        roll = song.hits[a:a + L]
        # the reference on just this window; silent padding in front keeps the absolute bar and
        # phrase phase (the structure metrics place fills on the song's phrase grid)
        pad = a % (song.steps_per_bar * m.bars_per_phrase)
        want = ref.window_metrics(np.concatenate([np.zeros((pad, roll.shape[1]), np.uint8), roll]),
                                  seq_len=L, stride=max(pad, 1), steps_per_bar=song.steps_per_bar,
                                  beats_per_bar=song.beats_per_bar, ngram_n=m.ngram_n,
                                  fast_threshold=m.fast_threshold, dense_threshold=m.dense_threshold,
                                  num_bars=cfg.window.seq_len // m.steps_per_bar, ioi_bins=m.steps_per_bar,
                                  bars_per_phrase=m.bars_per_phrase)
        row = 1 if pad else 0
        for name in WINDOW_SCHEMA:
            np.testing.assert_allclose(out[f"window/{name}"][w], want[name][row], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} window {w} (song {i}, start {a})")


def test_stage_on_the_builtin_corpus_matches_reference(tmp_path):
    from pipeline.corpus import generate_corpus
    songs = generate_corpus(num_songs=12, seed=3)
    assert {12, 16} <= {s.steps_per_bar for s in songs}          # the 3/4 style is in the sample
    write_store(tmp_path / "store.zarr", songs, ATTRS)
    cfg = compose([f"paths.store={tmp_path / 'store.zarr'}", f"paths.metrics={tmp_path / 'metrics.zarr'}"])
    summary = run(cfg)
    store = Store(tmp_path / "store.zarr")
    out = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")
    expected = sum(len(window_grid(s.num_steps, cfg.window.seq_len, cfg.window.stride)[0]) for s in songs)
    assert summary["errors"] == [] and summary["windows"] == expected > 0
    _check_sample(out, store, cfg, np.random.default_rng(0))


def test_stage_on_a_dask_distributed_scheduler(tmp_path, small_store):
    """metrics.scheduler=<address> runs the songs on that cluster; same tables as local threads."""
    from dask.distributed import LocalCluster
    store_path, _ = small_store
    run(_cfg(tmp_path, store_path))
    local = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        summary = run(_cfg(tmp_path, store_path, f"metrics.scheduler={cluster.scheduler_address}",
                           f"paths.metrics={tmp_path / 'dist.zarr'}"))
    dist = zarr.open_group(str(tmp_path / "dist.zarr"), mode="r")
    assert summary["windows"] == local["window/song"].shape[0]
    for name in ("song", "start", *WINDOW_SCHEMA):
        np.testing.assert_array_equal(dist[f"window/{name}"][:], local[f"window/{name}"][:], err_msg=name)
    np.testing.assert_array_equal(dist["song/step_entropy"][:], local["song/step_entropy"][:])


@pytest.mark.groove
@pytest.mark.slow
def test_stage_over_the_full_groove_store(groove_dir, tmp_path):
    """Ingest + build the whole Groove MIDI Dataset, run the stage, check a sample against the reference."""
    from pipeline.build import build
    from pipeline.ingest import ingest
    cfg = compose(["data=groove", f"data.path={groove_dir}", f"paths.data_dir={tmp_path}"])
    ingest(cfg)
    build(cfg)
    store = Store(tmp_path / "store.zarr")
    summary = run(cfg)
    lengths = np.diff(store.song_offsets)
    expected = [len(window_grid(int(T), cfg.window.seq_len, cfg.window.stride)[0]) for T in lengths]
    assert summary["errors"] == [] and summary["songs"] == store.num_songs > 1000
    out = zarr.open_group(str(tmp_path / "metrics.zarr"), mode="r")
    np.testing.assert_array_equal(np.bincount(out["window/song"][:], minlength=store.num_songs), expected)
    rng = np.random.default_rng(0)
    _check_sample(out, store, cfg, rng, num=60)
    sec_song = out["section/song"][:]
    for i in rng.choice(store.num_songs, size=10, replace=False):
        song = store.song(int(i))
        want = ref.song_metrics(song.hits, steps_per_bar=song.steps_per_bar,
                                bars_per_phrase=cfg.window.bars_per_phrase, ngram_n=cfg.metrics.ngram_n)
        for name in SONG_SCHEMA:
            np.testing.assert_allclose(out[f"song/{name}"][int(i)], want[name], rtol=1e-9, err_msg=name)
        want = ref.section_metrics(song.hits, song.sections, steps_per_bar=song.steps_per_bar,
                                   bars_per_phrase=cfg.window.bars_per_phrase)
        for name in SECTION_SCHEMA:
            np.testing.assert_allclose(out[f"section/{name}"][:][sec_song == i], want[name], rtol=1e-9)
    bar_off = out["bar/offsets"][:]
    np.testing.assert_array_equal(np.diff(bar_off), lengths // store.meta["steps_per_bar"])


@pytest.mark.slow
def test_dvc_repro_runs_metrics_and_a_metrics_config_edit_reruns_only_metrics(fresh_clone):
    repo, env = fresh_clone
    dvc = [sys.executable, "-m", "dvc"]

    def repro():
        r = subprocess.run(dvc + ["repro", "metrics"], cwd=repo, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    assert "Running stage 'metrics'" in repro()
    out = zarr.open_group(str(repo / "data" / "metrics.zarr"), mode="r")
    store = Store(repo / "data" / "store.zarr")
    assert out["window/song"].shape[0] > 0 and out["song/avg_hits"].shape[0] == store.num_songs
    conf = repo / "conf" / "metrics" / "default.yaml"
    conf.write_text(conf.read_text().replace("ngram_n: 4 ", "ngram_n: 3 "))
    log = repro()
    assert "Running stage 'metrics'" in log
    assert "Running stage 'build'" not in log and "Running stage 'ingest'" not in log
    assert zarr.open_group(str(repo / "data" / "metrics.zarr"), mode="r").attrs["ngram_n"] == 3
