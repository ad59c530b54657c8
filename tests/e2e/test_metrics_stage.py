"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The `metrics` stage on real Zarr stores: layout, agreement with kernels.reference, atomicity.
The rest is tests/unit/test_metrics_stage.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

import kernels.reference as ref
from kernels.spec import SECTION_SCHEMA, SONG_SCHEMA, WINDOW_SCHEMA, window_grid
from common.config import REPO_ROOT, compose
from pipeline.metrics import run
from pipeline.store import Store, content_hash, write_store
from tests.unit.test_metrics_stage import ATTRS, D, _cfg, _song, small_store  # noqa: F401 (fixtures and helpers shared with the unit tests)


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
