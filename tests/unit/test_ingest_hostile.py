"""Ingest against hostile input: every bad file is one skipped file with its
reason, sizes are checked before anything is allocated, odd directory entries are reported."""
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.ingest import IngestError, _run_part, ingest, load_npz
from pipeline.midi import write_midi
from tests.unit.test_midi import _mido_file

DM = DrumMap.default()


def _cfg(tmp_path, source, inp, *extra):
    return compose([f"data={source}", f"data.path={inp}", f"paths.data_dir={tmp_path / 'out'}",
                    "ingest.scheduler=synchronous", *extra])


def _reasons(report) -> dict[str, str]:
    return {Path(s["file"]).name: s["reason"] for s in report["skipped"]}


def _good_midi(path: Path) -> Path:
    hits = np.zeros((16, 9), np.uint8)
    hits[::4, 0] = 1
    return write_midi(path, hits, drum_map=DM)


def _good_npz(path: Path) -> Path:
    seq = np.zeros((16, 9), np.uint8)
    seq[0, 0] = 100
    np.savez(path, sequence=seq)
    return path


def _npz_claiming(path: Path, shape: tuple, dtype=np.uint8) -> Path:
    """An NPZ whose `sequence` header claims `shape` but holds only a few bytes: tiny on disk."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("sequence.npy", header.getvalue() + b"\0" * 64)
    return path


# ------------------------------------------------------------------ any error is one file's

def test_zero_drum_columns_and_tempo_zero_are_skipped_beside_good_files(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_npz(inp / "good.npz")
    np.savez(inp / "nodrums.npz", sequence=np.zeros((64, 0)))
    report = ingest(_cfg(tmp_path / "a", "npz", inp))
    assert report["songs"] == 1 and "no drum columns" in _reasons(report)["nodrums.npz"]

    midi = tmp_path / "midi"
    midi.mkdir()
    _good_midi(midi / "good.mid")
    _mido_file(midi / "tempo0.mid", [(0, 36, 90)], tempos=((0, 0),))
    report = ingest(_cfg(tmp_path / "b", "midi", midi))
    assert report["songs"] == 1
    assert "tempo0.mid: tempo 0 microseconds per quarter" in _reasons(report)["tempo0.mid"]


def test_an_unforeseen_exception_is_that_files_error_not_the_stages(tmp_path):
    def load(item):
        if item == 1:
            raise ZeroDivisionError("division by zero")
        return __import__("pipeline.corpus").corpus.generate_song(item, 0), 1, {}

    (tmp_path / "songs").mkdir()
    out = _run_part(0, [0, 1, 2], load, tmp_path / "songs", fail_fast=False)
    assert [("error" in r) for r in out] == [False, True, False]
    assert out[1]["error"] == "builtin song 1: ZeroDivisionError: division by zero"
    # on_error=fail: the partition stops at its first bad file
    assert len(_run_part(1, [0, 1, 2], load, tmp_path / "songs", fail_fast=True)) == 2


# ------------------------------------------------------------------ bounded memory per file

def test_far_notes_and_huge_headers_are_refused_before_allocating(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_midi(inp / "good.mid")
    _mido_file(inp / "far.mid", [(2 ** 28 - 1, 36, 90)])   # 37 bytes asking for gigabytes (the largest MIDI delta)
    _mido_file(inp / "long.mid", [(0, 36, 90), (10 ** 7, 38, 90)])
    report = ingest(_cfg(tmp_path, "midi", inp))
    reasons = _reasons(report)
    assert report["songs"] == 1 and set(reasons) == {"far.mid", "long.mid"}
    assert "more than max_steps=65536 (ingest.max_steps)" in reasons["far.mid"]
    assert "last note at tick 10000000" in reasons["long.mid"]
    # the cap is a config key: a smaller one refuses the good file too
    with pytest.raises(IngestError, match=r"no usable input file \(3 skipped"):
        ingest(_cfg(tmp_path / "small", "midi", inp, "ingest.max_steps=8"))

    npz = tmp_path / "npz"
    npz.mkdir()
    _good_npz(npz / "good.npz")
    _npz_claiming(npz / "steps.npz", (10 ** 9, 9))
    _npz_claiming(npz / "wide.npz", (64, 10 ** 8))
    report = ingest(_cfg(tmp_path / "n", "npz", npz))
    reasons = _reasons(report)
    assert report["songs"] == 1
    assert "1000000000 steps, more than max_steps=65536" in reasons["steps.npz"]
    assert "100000000 drum columns, more than 128" in reasons["wide.npz"]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_npz_memory_stays_a_small_multiple_of_its_array(tmp_path, dtype):
    rng = np.random.default_rng(0)
    seq = (rng.random((200_000, 9)) < 0.2).astype(dtype) * dtype(100)
    np.savez(tmp_path / "big.npz", sequence=seq)
    tracemalloc.start()   # numpy reports its buffers to tracemalloc
    song = load_npz(tmp_path / "big.npz", "big.npz", steps_per_bar=16, bpm=120.0, max_steps=10 ** 6)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert song.velocity.dtype == np.uint8 and np.array_equal(song.velocity, seq.astype(np.uint8))
    # the array itself + hits + velocity + temporaries of one block; float64 of it alone is 8 bytes/value
    assert peak < seq.nbytes + 4 * seq.size + (8 << 20), (peak, seq.nbytes)


# ------------------------------------------------------------------ odd entries, bad metadata

def test_links_folders_and_symlinked_folders_are_reported(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_midi(inp / "good.mid")
    (inp / "folder.mid").mkdir()
    os.symlink(tmp_path / "nowhere.mid", inp / "broken.mid")
    outside = tmp_path / "outside"
    outside.mkdir()
    _good_midi(outside / "other.mid")
    os.symlink(outside, inp / "linked")
    os.symlink(inp / "good.mid", inp / "alias.mid")   # a link to a file is read like the file
    report = ingest(_cfg(tmp_path, "midi", inp))
    reasons = _reasons(report)
    assert report["songs"] == 2 and set(reasons) == {"folder.mid", "broken.mid", "linked"}
    assert reasons["folder.mid"].endswith("folder.mid: a folder, not a file")
    assert "broken.mid: broken symbolic link" in reasons["broken.mid"]
    assert reasons["linked"].endswith("linked: symbolic link to a folder (not followed)")


@pytest.mark.parametrize("bpm, split, reason", [
    ("nan", "train", "bpm 'nan', must be a positive finite number"),
    ("-5", "train", "bpm '-5', must be a positive finite number"),
    ("0", "train", "bpm '0', must be a positive finite number"),
    ("100", "dev", "split 'dev', expected one of train, validation, test"),
])
def test_info_csv_invalid_values_skip_that_file(tmp_path, bpm, split, reason):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_midi(inp / "a.mid")
    _good_midi(inp / "b.mid")
    (inp / "info.csv").write_text("drummer,style,bpm,beat_type,time_signature,midi_filename,split\n"
                                  f"d1,funk,{bpm},beat,4-4,a.mid,{split}\nd1,funk,90,beat,4-4,b.mid,test\n")
    report = ingest(_cfg(tmp_path, "midi", inp))
    assert report["songs"] == 1 and list(_reasons(report)) == ["a.mid"]
    assert reason in _reasons(report)["a.mid"]


def test_npz_mixing_fractions_and_velocities_is_refused(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_npz(inp / "good.npz")
    seq = np.zeros((16, 9), np.float32)
    seq[0, 0], seq[4, 1] = 0.5, 7
    np.savez(inp / "mixed.npz", sequence=seq)
    report = ingest(_cfg(tmp_path, "npz", inp))
    assert report["songs"] == 1
    assert "mixes values above 1 (max 7" in _reasons(report)["mixed.npz"]
    assert "non-whole values (e.g. 0.5)" in _reasons(report)["mixed.npz"]


# ------------------------------------------------------------------ on_error=fail, sorted order

def test_fail_mode_names_the_first_bad_file_in_sorted_order(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(40):                      # partition 0: many good files, then the first bad one
        _good_npz(inp / f"a{i:02d}.npz")
    (inp / "a99.npz").write_text("first bad file in sorted order")
    for name in ("b0.npz", "c0.npz", "d0.npz"):  # later partitions fail at once
        (inp / name).write_text("later bad file")
    cfg = _cfg(tmp_path, "npz", inp, "ingest.on_error=fail", "ingest.files_per_task=41",
               "ingest.scheduler=threads", "ingest.workers=2")
    with pytest.raises(IngestError, match=r"a99\.npz: not an NPZ file"):
        ingest(cfg)
    assert not (tmp_path / "out" / "interim").exists()


# ------------------------------------------------------------------ empty files

def test_empty_files_say_so(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good_midi(inp / "good.mid")
    (inp / "empty.mid").write_bytes(b"")
    report = ingest(_cfg(tmp_path, "midi", inp))
    assert _reasons(report)["empty.mid"] == f"{inp / 'empty.mid'}: empty file"
