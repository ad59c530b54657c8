import numpy as np
import pytest

from common.atomic import atomic_path
from pipeline.drums import DrumMap
from pipeline.store import Song, Store, write_store

def _songs(rng, lengths):
    out = []
    for i, n in enumerate(lengths):
        hits = (rng.random((n, 9)) < 0.2).astype(np.uint8)
        vel = hits * rng.integers(1, 128, size=hits.shape).astype(np.uint8)
        off = (hits * rng.integers(-64, 65, size=hits.shape)).astype(np.int8)
        out.append(Song(name=f"s{i}", hits=hits, velocity=vel, split="train", bpm=100.0 + i, offset=off))
    return out

def test_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    songs = _songs(rng, [0, 5, 100, 33])
    write_store(tmp_path / "s.zarr", songs, DrumMap.default().to_attrs(), chunk_steps=16)
    store = Store(tmp_path / "s.zarr")
    assert store.num_songs == 4
    assert list(store.song_offsets) == [0, 0, 5, 105, 138]
    for i, s in enumerate(songs):
        got = store.song(i)
        np.testing.assert_array_equal(got.hits, s.hits)
        np.testing.assert_array_equal(got.velocity, s.velocity)
        np.testing.assert_array_equal(got.offset, s.offset)
        assert got.offset.dtype == np.int8
        assert got.name == s.name and got.bpm == pytest.approx(s.bpm)
    assert store.attrs["splits"] == {"train": 4, "validation": 0, "test": 0, "tune": 0}
    assert store.drum_names[0] == "kick"

def test_metadata_is_written_a_chunk_of_songs_at_a_time(tmp_path, monkeypatch):
    """MetadataWriter holds one chunk of songs (SONG_CHUNK): with chunks of 3 songs, 10 songs with
    0-2 sections each read back exactly, and a store made for other counts is refused at close."""
    import pipeline.store

    monkeypatch.setattr(pipeline.store, "SONG_CHUNK", 3)
    rng = np.random.default_rng(1)
    songs = _songs(rng, [4, 7, 1, 9, 16, 3, 5, 8, 2, 6])
    for i, s in enumerate(songs):
        s.sections = np.array([[0, 1], [1, s.num_steps]][:i % 3])
        s.split, s.style = ("train", "validation", "test")[i % 3], f"style{i}"
    write_store(tmp_path / "s.zarr", songs, DrumMap.default().to_attrs(), chunk_steps=5)
    store = Store(tmp_path / "s.zarr")
    assert store.root["songs"]["name"].chunks == (3,)
    assert list(store.song_offsets) == list(np.cumsum([0] + [s.num_steps for s in songs]))
    assert list(store.section_offsets) == list(np.cumsum([0] + [i % 3 for i in range(10)]))
    for i, s in enumerate(songs):
        got = store.song(i)
        assert (got.name, got.style, got.split) == (s.name, s.style, s.split)
        assert got.bpm == pytest.approx(s.bpm) and got.steps_per_bar == 16
        np.testing.assert_array_equal(got.sections, s.sections.reshape(-1, 2))
        np.testing.assert_array_equal(got.hits, s.hits)
    assert store.attrs["splits"] == {"train": 4, "validation": 3, "test": 3, "tune": 0}
    root = pipeline.store.create_store(tmp_path / "t.zarr", num_songs=2, num_steps=11, num_drums=9)
    w = pipeline.store.MetadataWriter(root)
    w.add(songs[0])
    with pytest.raises(ValueError, match="metadata of 1 songs, 4 steps and 0 sections for a store made for 2, 11"):
        w.close({})

def test_atomic_path_puts_the_old_directory_back_if_the_final_rename_fails(tmp_path, monkeypatch):
    import os

    import common.atomic

    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    (target / common.atomic.MARKER).write_text("build")
    real_replace, calls = os.replace, []
    monkeypatch.setattr(common.atomic, "exchange", lambda a, b: False)  # the two-rename fallback

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:          # old moved aside, then the new one fails to move in
            raise OSError("disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk went away"):
        with atomic_path(target, marker="build") as tmp:
            tmp.mkdir()
            (tmp / "new").write_text("new")
    assert (target / "old").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]

def test_atomic_path_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
