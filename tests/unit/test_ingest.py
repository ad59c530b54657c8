"""Stage `ingest`: NPZ and MIDI folders with every kind of bad input, splits, on_error, exit codes."""

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.ingest import IngestError, hash_split, ingest, iter_records, read_shard
from pipeline.midi import write_midi
from tests.unit.test_midi import _mido_file

DM = DrumMap.default()

def _cfg(tmp_path, source, inp, *extra):
    return compose([f"data={source}", f"data.path={inp}", f"paths.data_dir={tmp_path / 'out'}",
                    "ingest.scheduler=synchronous", *extra])

def _manifest(tmp_path):
    """The interim manifest with its song records (streamed to songs.jsonl) under "songs"."""
    interim = tmp_path / "out" / "interim"
    return {**json.loads((interim / "manifest.json").read_text()), "songs": list(iter_records(interim))}

def _npz_folder(root: Path) -> dict[str, str]:
    """Three good files and one of each bad kind; returns bad file name -> expected reason pattern."""
    root.mkdir()
    rng = np.random.default_rng(0)
    binary = (rng.random((32, 9)) < 0.3).astype(np.int64)
    binary[0, 0] = 1
    np.savez(root / "binary.npz", sequence=binary)
    frac = np.zeros((16, 9), np.float32)
    frac[0, 0], frac[3, 2], frac[5, 8] = 1.0, 0.5, 0.004  # 0-1 -> 127, 64, 1
    np.savez(root / "frac.npz", sequence=frac)
    sub = root / "sub"
    sub.mkdir()
    vel = np.zeros((48, 9), np.uint8)
    vel[0, 1], vel[47, 3] = 100, 20
    np.savez(sub / "velocity.npz", sequence=vel, sections=np.array([[0, 16], [16, 48]]))
    (root / "README.txt").write_text("not an npz, ignored")
    (root / "text.npz").write_text("plain text pretending to be an npz")
    np.savez(root / "nokey.npz", roll=binary)
    np.savez(root / "ndim3.npz", sequence=np.zeros((4, 9, 2)))
    np.savez(root / "nan.npz", sequence=np.where(binary > 0, np.nan, 0.0))
    np.savez(root / "inf.npz", sequence=np.where(binary > 0, np.inf, 0.0))
    np.savez(root / "negative.npz", sequence=-binary)
    np.savez(root / "fivedrums.npz", sequence=np.ones((8, 5)))
    np.savez(root / "empty.npz", sequence=np.zeros((0, 9)))
    np.savez(root / "pickled.npz", sequence=np.array([[None] * 9], dtype=object))
    np.savez(root / "badsections.npz", sequence=binary, sections=np.array([[0, 40]]))
    expressive = root / "expressive"
    expressive.mkdir()
    np.savez(expressive / "played.npz", sequence=binary, velocity=binary * 77, offset=binary * -12)
    np.savez(root / "badoffset.npz", sequence=binary, offset=binary * 65)
    np.savez(root / "floatoffset.npz", sequence=binary, offset=binary * 0.5)
    np.savez(root / "badvelocity.npz", sequence=binary, velocity=binary * 0)
    return {"badoffset.npz": "offsets must lie in -64..64", "floatoffset.npz": "'offset' must be an integer array",
            "badvelocity.npz": "'velocity' must be 1..127 on every hit", "text.npz": "not an NPZ file",
            "nokey.npz": "no 'sequence' array", "ndim3.npz": "must be 2-D",
            "nan.npz": "NaN or inf", "inf.npz": "NaN or inf", "negative.npz": "negative values",
            "fivedrums.npz": "5 drum columns, the other files have 9", "empty.npz": "zero length",
            "pickled.npz": "non-numeric dtype object", "badsections.npz": "sections must be"}

def test_npz_folder_skips_each_bad_file_with_its_reason(tmp_path):
    bad = _npz_folder(tmp_path / "in")
    report = ingest(_cfg(tmp_path, "npz", tmp_path / "in"))
    assert report["files"] == 4 + len(bad) and report["songs"] == 4
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad)
    for name, pattern in bad.items():
        assert name in reasons[name] and pattern in reasons[name], reasons[name]
    on_disk = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert on_disk["skipped"] == report["skipped"] and on_disk["skipped_count"] == len(bad)
    # in input order, the rejected 5-drum file among the others (it is found only at the end)
    names = [Path(s["file"]).name for s in report["skipped"]]
    assert names == sorted(names) and "fivedrums.npz" in names

    songs = {r["name"]: r for r in _manifest(tmp_path)["songs"]}
    assert set(songs) == {"binary", "frac", "sub/velocity", "expressive/played"}
    assert report["steps"] == 32 + 16 + 48 + 32
    shards = tmp_path / "out" / "interim" / "shards"

    def rows(name):   # the song's rows in its interim shard
        rec = songs[name]
        z = read_shard(shards / rec["shard"])
        return {k: v[rec["row"]:rec["row"] + rec["num_steps"]] for k, v in z.items()}
    frac = rows("frac")
    assert {(int(t), int(d)): int(frac["velocity"][t, d]) for t, d in np.argwhere(frac["hits"])} == \
        {(0, 0): 127, (3, 2): 64, (5, 8): 1}
    sub = rows("sub/velocity")
    assert int(sub["velocity"][0, 1]) == 100 and int(sub["velocity"][47, 3]) == 20 and sub["hits"].sum() == 2
    binary = rows("binary")
    assert set(np.unique(binary["velocity"])) <= {0, 127}
    assert (binary["offset"] == 0).all() and binary["offset"].dtype == np.int8
    played = rows("expressive/played")   # velocity and offset as given
    np.testing.assert_array_equal(played["velocity"], played["hits"] * 77)
    np.testing.assert_array_equal(played["offset"], played["hits"].astype(np.int8) * -12)
    # one shard per ingest task (plus the rejected 5-drum file's own), not one file per song
    assert {r["shard"] for r in songs.values()} == {"p00000_d9"}
    assert sorted(p.name for p in shards.iterdir()) == ["p00000_d5", "p00000_d9"]
    assert songs["sub/velocity"]["sections"] == [[0, 16], [16, 48]]
    assert all(r["split"] in ("train", "validation", "test") for r in songs.values())

def test_midi_folder_bad_files_and_unmapped_pitches(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    hits = np.zeros((16, 9), np.uint8)
    hits[::4, 0] = 1
    write_midi(inp / "good.mid", hits, drum_map=DM)
    # mapped notes plus 3 hand claps (39) and 1 tambourine (54): kept, unmapped ones counted
    _mido_file(inp / "mixed.midi", [(0, 36, 90), (24, 38, 90), (24, 39, 70), (48, 39, 70), (72, 39, 70),
                                    (72, 54, 60)], tpq=96)
    (inp / "junk.mid").write_bytes(b"MThd garbage")
    _mido_file(inp / "piano.mid", [(0, 60, 80, 0)])
    _mido_file(inp / "claps.mid", [(0, 39, 80)])
    report = ingest(_cfg(tmp_path, "midi", inp))
    assert report["songs"] == 2 and report["files"] == 5
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"junk.mid", "piano.mid", "claps.mid"}
    assert "junk.mid: unreadable MIDI" in reasons["junk.mid"]
    assert "piano.mid: no drum notes" in reasons["piano.mid"]
    assert "claps.mid: no drum notes in the mapping" in reasons["claps.mid"]
    assert report["notes_mapped"] == 4 + 2
    assert report["notes_dropped"] == {"39": 3, "54": 1}
    assert report["unmapped_by_file"] == [{"file": "mixed.midi", "pitches": {"39": 3, "54": 1}}]

def _groove_like_folder(tmp_path, num_files: int, info_rows: str):
    """d1/0.mid … one-kick MIDI files at 100 bpm, with an info.csv holding `info_rows`."""
    inp = tmp_path / "in"
    (inp / "d1").mkdir(parents=True)
    hits = np.zeros((16, 9), np.uint8)
    hits[0, 0] = 1
    for i in range(num_files):
        write_midi(inp / "d1" / f"{i}.mid", hits, drum_map=DM, bpm=100)
    (inp / "info.csv").write_text("drummer,style,bpm,beat_type,time_signature,midi_filename,split\n" + info_rows)
    return inp

def test_info_csv_metadata_and_split(tmp_path):
    inp = _groove_like_folder(tmp_path, 3, "drummer7,funk/groove,97,fill,4-4,d1/0.mid,validation\n"
                                           "drummer8,jazz,140,beat,4-4,d1/1.mid,test\n")
    ingest(_cfg(tmp_path, "midi", inp))
    songs = {r["name"]: r for r in _manifest(tmp_path)["songs"]}
    assert (songs["d1/0"]["drummer"], songs["d1/0"]["style"], songs["d1/0"]["beat_type"],
            songs["d1/0"]["split"], songs["d1/0"]["bpm"]) == ("drummer7", "funk/groove", "fill", "validation", 97.0)
    assert songs["d1/1"]["split"] == "test" and songs["d1/1"]["bpm"] == 140.0
    # not in info.csv: hash split, tempo from the file
    assert songs["d1/2"]["split"] == hash_split("d1/2", {"train": .7, "validation": .15, "test": .15})
    assert songs["d1/2"]["bpm"] == 100.0 and songs["d1/2"]["drummer"] == ""

def test_info_csv_bad_bpm_skips_that_file_only(tmp_path):
    inp = _groove_like_folder(tmp_path, 2, "drummer7,funk,fast,beat,4-4,d1/0.mid,train\n")
    report = ingest(_cfg(tmp_path, "midi", inp))
    assert [s["file"] for s in report["skipped"]] == [str(inp / "d1" / "0.mid")]
    assert "bpm 'fast'" in report["skipped"][0]["reason"]
    assert [r["name"] for r in _manifest(tmp_path)["songs"]] == ["d1/1"]

def test_hash_split_is_deterministic_and_follows_ratios():
    ratios = {"train": 0.7, "validation": 0.15, "test": 0.15}
    ids = [f"drummer{i % 10}/session{i % 7}/{i}" for i in range(6000)]
    splits = [hash_split(s, ratios) for s in ids]
    assert splits == [hash_split(s, ratios) for s in ids]
    frac = {s: splits.count(s) / len(ids) for s in ratios}
    assert frac["train"] == pytest.approx(0.70, abs=0.025)
    assert frac["validation"] == pytest.approx(0.15, abs=0.02)
    assert frac["test"] == pytest.approx(0.15, abs=0.02)
    assert {hash_split(s, {"train": 0, "validation": 1, "test": 0}) for s in ids[:50]} == {"validation"}

def test_all_bad_raises_and_leaves_no_interim(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.npz").write_text("nope")
    with pytest.raises(IngestError, match=r"no usable input file.*a\.npz: not an NPZ"):
        ingest(_cfg(tmp_path, "npz", inp))
    assert list((tmp_path / "out").iterdir()) == []  # no interim, no report, no temporaries

def test_fail_mode_in_parallel_tasks_names_a_bad_file(tmp_path):
    bad = _npz_folder(tmp_path / "in")
    cfg = _cfg(tmp_path, "npz", tmp_path / "in", "ingest.on_error=fail", "ingest.files_per_task=2",
               "ingest.scheduler=threads")
    with pytest.raises(IngestError) as err:
        ingest(cfg)
    assert any(f"{name}: {reason}" in str(err.value) for name, reason in bad.items()), str(err.value)
    assert list((tmp_path / "out").iterdir()) == []

def test_missing_input_folder_setting_is_explained(tmp_path):
    cfg = compose(["data=npz", f"paths.data_dir={tmp_path}"])
    with pytest.raises(IngestError, match=r"data\.path is not set.*data=npz data\.path="):
        ingest(cfg)
