"""Stage `build`: interim songs -> Zarr store with dask; contents, chunking, parallel = serial, atomicity."""
import json

import numpy as np
import pytest
import zarr

import pipeline.build
from pipeline.build import build
from common.config import compose
from pipeline.ingest import ingest, iter_records
from pipeline.store import Store


def _npz_inputs(root, lengths, seed=0):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rolls = {}
    for i, n in enumerate(lengths):
        vel = np.where(rng.random((n, 9)) < 0.25, rng.integers(1, 128, (n, 9)), 0).astype(np.uint8)
        vel[0, 0] = 5  # never all zero; also makes max > 1 so values are kept as velocities
        vel[-1, 1] = 99
        sections = np.array([[0, n // 2], [n // 2, n]]) if n > 1 else np.zeros((0, 2), np.int64)
        np.savez(root / f"song{i:02d}.npz", sequence=vel, sections=sections)
        rolls[f"song{i:02d}"] = (vel, sections)
    return rolls


def _cfg(tmp_path, *extra):
    return compose(["data=npz", f"data.path={tmp_path / 'in'}", f"paths.data_dir={tmp_path / 'out'}",
                    "ingest.scheduler=synchronous", *extra])


@pytest.mark.parametrize("chunk, scheduler", [(7, "threads"), (64, "synchronous"), (100000, "threads")])
def test_store_holds_every_song_exactly(tmp_path, chunk, scheduler):
    lengths = [1, 5, 33, 16, 70, 2, 9]
    rolls = _npz_inputs(tmp_path / "in", lengths)
    cfg = _cfg(tmp_path, f"store.chunk_steps={chunk}", f"store.scheduler={scheduler}")
    ingest(cfg)
    summary = build(cfg)
    store = Store(tmp_path / "out" / "store.zarr")
    assert summary["steps"] == sum(lengths) == store.attrs["num_steps"] == store.hits.shape[0]
    assert store.num_songs == len(lengths) and list(store.song_offsets) == list(np.cumsum([0] + lengths))
    assert store.hits.chunks == (min(chunk, sum(lengths)), 9)
    total_hits = 0
    for i in range(store.num_songs):
        song = store.song(i)
        vel, sections = rolls[song.name]
        np.testing.assert_array_equal(song.velocity, vel)
        np.testing.assert_array_equal(song.hits, (vel > 0).astype(np.uint8))
        np.testing.assert_array_equal(song.sections, sections.reshape(-1, 2))
        assert song.source == f"{song.name}.npz" and song.steps_per_bar == 16 and song.bpm == 120.0
        total_hits += int((vel > 0).sum())
    assert summary["hits"] == store.attrs["num_hits"] == total_hits
    assert sum(store.attrs["splits"].values()) == len(lengths)
    assert store.attrs["drum_names"][0] == "kick" and store.attrs["steps_per_quarter"] == 4
    assert len(store.attrs["source_hash"]) == 64


def test_streamed_source_hash_is_the_hash_of_the_whole_manifest(tmp_path):
    """build hashes the song records as it streams them; the digest is the sha256 of the manifest
    written at once (drum map, grid, every record without its shard placement, keys sorted)."""
    import hashlib

    _npz_inputs(tmp_path / "in", [8, 12, 30])
    cfg = _cfg(tmp_path)
    ingest(cfg), build(cfg)
    interim = tmp_path / "out" / "interim"
    head = json.loads((interim / "manifest.json").read_text())
    whole = {k: head[k] for k in ("drum_names", "drum_pitches", "mapping", "source", "steps_per_quarter")}
    whole["songs"] = [{k: v for k, v in r.items() if k not in ("shard", "row")} for r in iter_records(interim)]
    assert len(whole["songs"]) == head["num_songs"] == 3 and head["num_sections"] == 6
    expected = hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()
    assert Store(tmp_path / "out" / "store.zarr").attrs["source_hash"] == expected


def test_source_hash_follows_content(tmp_path):
    _npz_inputs(tmp_path / "in", [8, 12])
    cfg = _cfg(tmp_path)
    ingest(cfg), build(cfg)
    first = Store(tmp_path / "out" / "store.zarr").attrs["source_hash"]
    ingest(cfg), build(cfg)
    assert Store(tmp_path / "out" / "store.zarr").attrs["source_hash"] == first
    # how ingest batched its tasks names the interim files, but is not content
    batched = _cfg(tmp_path, "ingest.files_per_task=1")
    ingest(batched), build(batched)
    assert Store(tmp_path / "out" / "store.zarr").attrs["source_hash"] == first
    seq = np.load(tmp_path / "in" / "song01.npz")["sequence"]
    seq[3, 4] = 0 if seq[3, 4] else 77
    np.savez(tmp_path / "in" / "song01.npz", sequence=seq)
    ingest(cfg), build(cfg)
    assert Store(tmp_path / "out" / "store.zarr").attrs["source_hash"] != first


def test_failed_build_keeps_previous_store(tmp_path):
    _npz_inputs(tmp_path / "in", [8, 12, 30])
    cfg = _cfg(tmp_path, "store.chunk_steps=4")
    ingest(cfg), build(cfg)
    out = tmp_path / "out"
    before = zarr.open_group(str(out / "store.zarr"), mode="r")["hits"][:]
    # break the interim data: one song's rows vanish mid-build
    records = list(iter_records(out / "interim"))
    (out / "interim" / "shards" / records[2]["shard"]).unlink()
    with pytest.raises(FileNotFoundError):
        build(cfg)
    np.testing.assert_array_equal(Store(out / "store.zarr").hits[:], before)
    assert sorted(p.name for p in out.iterdir()) == ["ingest_report.json", "interim", "store.zarr"]


def test_build_without_ingest_says_what_to_run(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json.*pipeline\.ingest"):
        build(cfg)


def test_chunk_tasks_read_only_overlapping_shards(tmp_path, monkeypatch):
    """Memory is bounded by chunk size: a chunk task reads only the shards of the songs crossing its
    rows, each once (one song per shard here, so shards read = songs crossing)."""
    _npz_inputs(tmp_path / "in", [10] * 12)
    cfg = _cfg(tmp_path, "store.chunk_steps=25", "store.scheduler=synchronous", "ingest.files_per_task=1")
    ingest(cfg)
    opened = []
    real_read = pipeline.build.read_shard
    monkeypatch.setattr(pipeline.build, "read_shard", lambda p: opened.append(str(p)) or real_read(p))
    build(cfg)
    # 120 rows in chunks of 25 -> 5 chunks; songs of 10 rows: chunk k opens the songs over [25k, 25k+25)
    expected = sum(len(range(25 * k // 10, (min(25 * k + 25, 120) - 1) // 10 + 1)) for k in range(5))
    assert len(opened) == expected == 14


def test_builtin_corpus_store_equals_generated_songs(tmp_path):
    from pipeline.corpus import generate_corpus

    cfg = compose(["data=builtin", "data.corpus.num_songs=5", "data.corpus.seed=3",
                   f"paths.data_dir={tmp_path / 'out'}", "ingest.files_per_task=2", "store.chunk_steps=1000"])
    report = ingest(cfg)
    build(cfg)
    store = Store(tmp_path / "out" / "store.zarr")
    songs = generate_corpus(5, seed=3, **{k: v for k, v in cfg.data.corpus.items() if k not in ("num_songs", "seed")})
    assert store.num_songs == report["songs"] == 5
    for i, song in enumerate(songs):
        got = store.song(i)
        assert got.name == song.name and got.style == song.style and got.split in ("train", "validation", "test")
        np.testing.assert_array_equal(got.hits, song.hits)
        np.testing.assert_array_equal(got.velocity, song.velocity)
        np.testing.assert_array_equal(got.sections, song.sections)
        assert got.steps_per_bar == song.steps_per_bar and got.bpm == song.bpm


def test_ingest_and_build_on_processes_write_the_synchronous_store(tmp_path):
    """The task function and the loader pickle to worker processes (no closures); same store."""
    from pipeline.store import content_hash

    _npz_inputs(tmp_path / "in", [8, 12, 30, 5, 17])
    hashes = []
    for scheduler in ("processes", "synchronous"):
        cfg = compose(["data=npz", f"data.path={tmp_path / 'in'}", f"paths.data_dir={tmp_path / scheduler}",
                       f"ingest.scheduler={scheduler}", f"store.scheduler={scheduler}", "ingest.files_per_task=2",
                       "store.chunk_steps=16"])
        ingest(cfg), build(cfg)
        hashes.append(content_hash(cfg.paths.store))
    assert hashes[0] == hashes[1]
    assert Store(tmp_path / "processes" / "store.zarr").num_songs == 5
