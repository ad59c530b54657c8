import numpy as np
import pytest

from pipeline.atomic import atomic_path
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
    assert store.attrs["splits"] == {"train": 4, "validation": 0, "test": 0}
    assert store.drum_names[0] == "kick"


def test_old_schema_store_is_refused_with_how_to_rebuild(tmp_path):
    """A version-1 store (no `offset`) is refused: the message names the store and the rebuild command."""
    import zarr
    write_store(tmp_path / "old.zarr", _songs(np.random.default_rng(1), [8]), DrumMap.default().to_attrs())
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+")
    del root["offset"]
    root.attrs["schema_version"] = 1
    with pytest.raises(ValueError, match=r"old\.zarr: schema_version 1.*reads 2.*offset.*dvc repro build"):
        Store(tmp_path / "old.zarr")


def test_atomic_path_puts_the_old_directory_back_if_the_final_rename_fails(tmp_path, monkeypatch):
    import os

    import pipeline.atomic

    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    (target / pipeline.atomic.MARKER).write_text("build")
    real_replace, calls = os.replace, []
    monkeypatch.setattr(pipeline.atomic, "exchange", lambda a, b: False)  # the two-rename fallback

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
