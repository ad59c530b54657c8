"""Hostile cases, round two: each test fails without the fix it names (lock files that follow links,
NPZ members checked by header, many-track MIDI memory, checkpoint shapes before the model, store
chunks verified, wrapped ticks, info.csv problems, tiny NPZ values, relative export paths, stop
signals, optimizer changes on resume, one-line errors, the evaluate lock)."""

import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.lock import DATA_LOCK, LockHeld, hold

def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / DATA_LOCK).symlink_to(victim)
    with pytest.raises(LockHeld, match="symbolic link"):
        with hold(data / DATA_LOCK, "data directory"):
            pass
    assert victim.read_text() == "precious\n"

def test_a_lock_file_that_is_a_fifo_or_hard_link_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.lock")
    with pytest.raises(LockHeld, match="not a regular file"):
        with hold(tmp_path / "fifo.lock", "x"):
            pass
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / "hard.lock")
    with pytest.raises(LockHeld, match="hard link"):
        with hold(tmp_path / "hard.lock", "x"):
            pass
    assert victim.read_text() == "precious\n"

def test_a_regular_lock_file_still_locks(tmp_path):
    with hold(tmp_path / ".lock", "run directory"):
        assert "pid" in (tmp_path / ".lock").read_text()

def _npz_with_member(path: Path, name: str, shape: tuple, dtype) -> Path:
    """A good `sequence` plus a member whose header claims `shape` (its data: a few bytes)."""
    seq = io.BytesIO()
    np.save(seq, np.ones((16, 9), np.uint8))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sequence.npy", seq.getvalue())
        zf.writestr(f"{name}.npy", header.getvalue() + b"\0" * 64)
    return path

@pytest.mark.parametrize("name, shape, dtype, reason", [
    ("velocity", (2_000_000_000, 1), np.uint8, "'velocity' must be an integer array of the shape"),
    ("offset", (16, 9), np.float32, "'offset' must be an integer array"),
    ("sections", (1_000_000_000, 2), np.int16, "1000000000 sections for 16 steps"),
    ("sections", (3,), np.int64, "'sections' must be an integer \\[K, 2\\]"),
])
def test_every_npz_member_is_refused_by_its_header_before_any_is_read(tmp_path, name, shape, dtype, reason):
    from pipeline.ingest import BadInput, load_npz

    path = _npz_with_member(tmp_path / "x.npz", name, shape, dtype)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(BadInput, match=reason):
            load_npz(path, "x.npz", steps_per_bar=16, bpm=120.0, max_steps=65536)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000

def _far_midi(path: Path, total: int) -> Path:
    """A kick at 0, then deltas (markers) adding up to `total` ticks, then a snare and a hi-hat."""
    import mido

    track = mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90, time=0)])
    left = total
    while left > 0:
        d = min(left, 2 ** 28 - 1)
        left -= d
        track.append(mido.MetaMessage("marker", text="x", time=d))
    track.append(mido.Message("note_on", channel=9, note=38, velocity=90, time=0))
    track.append(mido.Message("note_on", channel=9, note=42, velocity=90, time=96))
    mf = mido.MidiFile(ticks_per_beat=96)
    mf.tracks.append(track)
    mf.save(path)
    return path

@pytest.mark.parametrize("total", [2 ** 31 + 1000, 2 ** 32 + 1000])
def test_ticks_past_2pow31_are_refused_not_wrapped_into_the_song(tmp_path, total):
    from pipeline.drums import DrumMap
    from pipeline.midi import MidiError, read_midi

    path = _far_midi(tmp_path / "far.mid", total)
    with pytest.raises(MidiError, match=f"reaches tick {total + 96}, past 2147483647"):
        read_midi(path, DrumMap.default(), max_steps=65536)

def _tiny_model_checkpoint(path: Path, **config_changes) -> Path:
    import torch

    from train.model import HierarchicalDrumModel

    m = HierarchicalDrumModel.from_config(dict(num_drums=9, step_hidden_dim=16, bar_hidden_dim=16, phrase_hidden_dim=16))
    torch.save({"model": m.state_dict(), "model_config": {**m.config, **config_changes}}, path)
    return path

def test_a_checkpoint_with_an_unknown_model_config_key_is_one_line(tmp_path):
    from train.training.checkpoint import load_model

    path = _tiny_model_checkpoint(tmp_path / "odd.pt", warp_drive=True)
    with pytest.raises(ValueError, match="model_config does not build a model .*warp_drive"):
        load_model(path)

def test_a_good_checkpoint_still_loads_bit_identically(tmp_path):
    import torch

    from train.training.checkpoint import load_model

    path = _tiny_model_checkpoint(tmp_path / "ok.pt")
    model, ck = load_model(path)
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())

@pytest.fixture(scope="module")
def tiny_ready(tmp_path_factory):
    from tests.trainer_data import build_tiny_ready

    return build_tiny_ready(tmp_path_factory.mktemp("ready"))

def test_resuming_with_another_optimizer_type_is_refused_before_anything_is_written(tiny_ready, tmp_path):
    from common.config import ConfigError, compose
    from train.training.trainer import fit

    run = tmp_path / "run"
    fit(compose([*tiny_ready, f"trainer.run_dir={run}", "trainer.max_epochs=1"]))
    files = (run / "checkpoints" / "config.yaml", run / "checkpoints" / "last.pt")
    before = [p.read_bytes() for p in files]
    with pytest.raises(ConfigError, match="trainer.optimizer.type=SGD: its optimizer state is AdamW's"):
        fit(compose([*tiny_ready, f"trainer.run_dir={run}", "trainer.max_epochs=2", "trainer.optimizer.type=SGD",
                     "~trainer.optimizer.config.betas"]))
    assert [p.read_bytes() for p in files] == before

def test_a_copied_data_directory_reads_its_own_store(tmp_path, capsys):
    import json
    import shutil

    from common.config import compose
    from pipeline.ready_paths import recorded
    from tests.tiny_checkpoint import make_ready
    from train.training.build import drum_info

    first = make_ready(tmp_path / "first")
    manifest = json.loads((first / "ready" / "manifest.json").read_text())
    assert (manifest["store"], manifest["metrics_store"]) == ("store.zarr", "metrics.zarr")
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    shutil.rmtree(first)
    assert recorded(copy / "ready", manifest, "store") == copy / "store.zarr"
    info = drum_info(compose([f"paths.data_dir={copy}"]), copy / "ready")
    assert "not found" not in capsys.readouterr().err and len(info["drum_names"]) == 9
    # a manifest of before, with absolute paths, still reads them
    old = {**manifest, "store": str(copy / "store.zarr")}
    assert recorded(copy / "ready", old, "store") == copy / "store.zarr"

def test_npz_values_under_1_254_are_hits_of_velocity_1(tmp_path):
    from pipeline.ingest import load_npz

    seq = np.zeros((16, 9), np.float32)
    seq[::4, 0] = 1 / 300          # rounds to velocity 0
    seq[2::4, 1] = 0.5             # velocity 64
    seq[3, 2] = 1e-30
    np.savez(tmp_path / "soft.npz", sequence=seq)
    song = load_npz(tmp_path / "soft.npz", "soft.npz", steps_per_bar=16, bpm=120.0, max_steps=65536)
    np.testing.assert_array_equal(song.hits, seq > 0)
    assert song.velocity[::4, 0].tolist() == [1] * 4 and song.velocity[3, 2] == 1
    assert song.velocity[2::4, 1].tolist() == [64] * 4

def _groove_layout(tmp_path: Path, info: bytes | None) -> Path:
    from pipeline.drums import DrumMap
    from pipeline.midi import write_midi

    inp = tmp_path / "in"
    hits = np.zeros((16, 9), np.uint8)
    hits[::4, 0] = 1
    for name in ("a.mid", "b.mid"):
        write_midi(inp / name, hits, drum_map=DrumMap.default())
    if info is not None:
        (inp / "info.csv").write_bytes(info)
    return inp

def _ingest(tmp_path: Path, inp: Path) -> dict:
    from common.config import compose
    from pipeline.ingest import ingest

    return ingest(compose(["data=midi", f"data.path={inp}", f"paths.data_dir={tmp_path / 'out'}",
                           "ingest.scheduler=synchronous"]))

HEAD = b"midi_filename,split,style,bpm\n"

@pytest.mark.parametrize("info, reason", [
    (HEAD + b"a.mid,train,rock,100\nb.mid,train,funk,90\n\xff\xfe,test,x,1\n", "not UTF-8 text"),
    (b"filename,split\na.mid,train\n", "no 'midi_filename' column"),
])
def test_an_unreadable_info_csv_is_reported_and_the_midi_files_are_kept(tmp_path, info, reason):
    report = _ingest(tmp_path, _groove_layout(tmp_path, info))
    assert report["songs"] == 2
    assert [(Path(s["file"]).name, reason in s["reason"]) for s in report["skipped"]] == [("info.csv", True)]

def test_an_info_csv_folder_is_reported_and_the_midi_files_are_kept(tmp_path):
    inp = _groove_layout(tmp_path, None)
    (inp / "info.csv").mkdir()
    report = _ingest(tmp_path, inp)
    assert report["songs"] == 2 and "not a regular file" in report["skipped"][0]["reason"]

def test_info_csv_rows_that_disagree_skip_their_file_only(tmp_path):
    info = HEAD + b"a.mid,train,rock,100\nb.mid,train,funk,90\na.mid,test,rock,100\nb.mid,train,funk,90\n"
    report = _ingest(tmp_path, _groove_layout(tmp_path, info))
    assert report["songs"] == 1 and report["splits"]["train"] == 1
    (entry,) = report["skipped"]
    assert Path(entry["file"]).name == "a.mid"
    assert "info.csv has 2 rows for it (lines 2, 4) that differ (split 'train' vs 'test')" in entry["reason"]

@pytest.fixture()
def chunked_store(tmp_path):
    """A store of 64-row chunks (songs cross chunks) and its metrics, both written while intact."""
    from common.config import compose
    from pipeline.metrics import run
    from pipeline.store import Song, write_store

    rng = np.random.default_rng(3)
    songs = []
    for i, T in enumerate([200, 40, 150, 96]):
        hits = (rng.random((T, 9)) < 0.3).astype(np.uint8)
        songs.append(Song(name=f"song{i}", hits=hits, velocity=hits * np.uint8(90), split="train",
                          offset=(hits * rng.integers(-64, 65, hits.shape)).astype(np.int8)))
    attrs = {"drum_names": [f"d{i}" for i in range(9)], "drum_pitches": list(range(9)), "mapping": "t",
             "steps_per_quarter": 4, "source_hash": "x"}
    write_store(tmp_path / "store.zarr", songs, attrs, chunk_steps=64)
    cfg = compose([f"paths.store={tmp_path / 'store.zarr'}", f"paths.metrics={tmp_path / 'metrics.zarr'}",
                   "window.seq_len=64", "window.stride=16", "metrics.num_workers=1"])
    run(cfg)
    return tmp_path, cfg

def _damage(store: Path, how: str) -> None:
    chunk = store / "hits" / "c" / "3" / "0"      # rows 192..255: the end of song0 and the start of song1
    if how == "missing":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:7] + b"\x00garbage" * 3)

@pytest.mark.parametrize("how, reason", [("missing", "its rows sum to"), ("garbled", "unreadable chunk")])
def test_a_damaged_store_chunk_stops_metrics_and_export_naming_song_and_array(chunked_store, how, reason):
    from pipeline.export import export
    from pipeline.metrics import run
    from pipeline.store import DamagedStore

    tmp_path, cfg = chunked_store
    export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready")   # intact: fine
    _damage(tmp_path / "store.zarr", how)
    with pytest.raises(DamagedStore, match=f"song 0 \\('song0'\\), array 'hits'.*{reason}.*rebuild it") as e:
        export(tmp_path / "store.zarr", tmp_path / "metrics.zarr", tmp_path / "ready2")
    assert "\n" not in str(e.value)
    with pytest.raises(DamagedStore, match=f"song 0 \\('song0'\\), array 'hits'.*{reason}"):
        run(cfg)

def test_the_build_stage_records_each_songs_sums(tmp_path):
    from common.config import compose
    from pipeline.build import build
    from pipeline.ingest import ingest
    from pipeline.store import STEP_ARRAYS, Store

    cfg = compose([f"paths.data_dir={tmp_path}", "data.corpus.num_songs=12", "ingest.scheduler=synchronous",
                   "store.chunk_steps=500", "store.scheduler=synchronous"])
    ingest(cfg)
    build(cfg)
    store = Store(cfg.paths.store)
    for name in STEP_ARRAYS:
        want = [int(np.asarray(store.root[name][store.song_slice(i)]).sum(dtype=np.int64)) for i in range(12)]
        assert store.root["checks"][name][:].tolist() == want
    assert int(store.root["checks"]["hits"][:].sum()) == store.attrs["num_hits"]

def _enospc(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")

def _cli(monkeypatch, capsys, main, args: list[str]) -> tuple[int, list[str]]:
    """Run a Hydra CLI's main in this process; (exit code, stderr lines)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["x", *args, "hydra.output_subdir=null", "hydra/job_logging=disabled",
                                      "hydra/hydra_logging=disabled"])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]

def _one_line(lines: list[str], stage: str, *words: str) -> None:
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: "), lines
    assert all(w in lines[0] for w in words), lines

def test_a_full_disk_in_ingest_build_and_metrics_is_one_line(tmp_path, monkeypatch, capsys):
    import pipeline.build
    import pipeline.ingest
    import pipeline.metrics

    base = [f"paths.data_dir={tmp_path}", "data.corpus.num_songs=4", "ingest.scheduler=synchronous",
            "store.scheduler=synchronous", f"hydra.run.dir={tmp_path / 'h'}"]
    with monkeypatch.context() as m:
        m.setattr(pipeline.ingest, "write_shard", _enospc)
        _one_line(_cli(m, capsys, pipeline.ingest.main, base)[1], "ingest", "no space left on the device")
    assert not (tmp_path / "interim").exists()
    assert _cli(monkeypatch, capsys, pipeline.ingest.main, base)[0] == 0
    with monkeypatch.context() as m:
        m.setattr(pipeline.build, "_write_chunk", _enospc)
        _one_line(_cli(m, capsys, pipeline.build.main, base)[1], "build", "no space left on the device")
    assert _cli(monkeypatch, capsys, pipeline.build.main, base)[0] == 0
    with monkeypatch.context() as m:
        m.setattr(pipeline.metrics, "_finish", _enospc)
        _one_line(_cli(m, capsys, pipeline.metrics.main, base)[1], "metrics", "no space left on the device")

def test_a_refused_output_path_in_ingest_and_build_is_one_line(tmp_path, monkeypatch, capsys):
    import pipeline.build
    import pipeline.ingest

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    base = [f"paths.data_dir={tmp_path}", "data.corpus.num_songs=4", "ingest.scheduler=synchronous",
            "store.scheduler=synchronous", f"hydra.run.dir={tmp_path / 'h'}"]
    code, lines = _cli(monkeypatch, capsys, pipeline.ingest.main, base + [f"paths.interim={mine}"])
    assert code == 1
    _one_line(lines, "ingest", "not a stage output")
    _cli(monkeypatch, capsys, pipeline.ingest.main, base)
    code, lines = _cli(monkeypatch, capsys, pipeline.build.main, base + [f"paths.store={mine}"])
    assert code == 1
    _one_line(lines, "build", "not a stage output")
    assert (mine / "thesis.tex").read_text() == "x"

def test_a_full_disk_while_saving_a_checkpoint_is_an_oserror_naming_it(tmp_path, monkeypatch):
    import contextlib
    import errno

    import torch

    import train.training.checkpoint as checkpoint

    (tmp_path / "last.pt").write_bytes(b"previous")
    # the temporary lands on /dev/full: every write fails with ENOSPC, as on a full disk
    monkeypatch.setattr(checkpoint, "atomic_path", lambda p: contextlib.nullcontext(Path("/dev/full")))
    with pytest.raises(OSError) as e:
        checkpoint.save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(50_000)})
    assert e.value.errno == errno.ENOSPC and str(tmp_path / "last.pt") in str(e.value)
    assert (tmp_path / "last.pt").read_bytes() == b"previous"

def test_a_300_character_run_name_is_a_config_error():
    from common.config import ConfigError, compose
    from train.training.config_checks import validate_config

    with pytest.raises(ConfigError, match="trainer.run_name: 300 characters, at most 200"):
        validate_config(compose([f"trainer.run_name={'r' * 300}"]))
