"""Round two of benchmarks/hostile.py: the cases, each named r2_<item>_<what>.

Ingest cases (run by hostile.run_case): a 2 GB `velocity` / `sections` member in a 2 MB NPZ, MIDI
files of 2,000 and 8,000 one-note tracks, ticks past 2**31 (and 2**32), info.csv problems, NPZ
values under 1/254. Other cases (a function each: repo, work folder, address-space limit -> dict): a
lock file linked to a victim file, a checkpoint asking for a huge model, a store chunk deleted /
garbled before metrics and export, SIGTERM during training. They use only the stage CLIs, the
checkpoint loader and tests/trainer_data.py of the checkout, so they run against older trees too.
"""
from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import mido
import numpy as np

from benchmarks.hostile import good_midis


def _npz_claiming(path: Path, name: str, shape: tuple, dtype) -> None:
    seq, head = io.BytesIO(), io.BytesIO()
    np.save(seq, (np.random.default_rng(0).random((64, 9)) < .2).astype(np.uint8) * 100)
    np.lib.format.write_array_header_1_0(head, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sequence.npy", seq.getvalue())
        with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:   # the real bytes, deflated to ~2 MB
            fh.write(head.getvalue())
            block = b"\0" * (1 << 24)
            left = int(np.prod(shape)) * np.dtype(dtype).itemsize
            while left > 0:
                fh.write(block[:min(left, len(block))])
                left -= len(block)


def _tracks(path: Path, n: int) -> None:
    mf = mido.MidiFile(type=1, ticks_per_beat=96)
    for i in range(n):
        mf.tracks.append(mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90,
                                                      time=24 * (i % 64))]))
    mf.save(path)


def _far(path: Path, total: int) -> None:
    track, left = mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90, time=0)]), total
    while left > 0:
        d = min(left, 2 ** 28 - 1)
        left -= d
        track.append(mido.MetaMessage("marker", text="x", time=d))
    track.append(mido.Message("note_on", channel=9, note=38, velocity=90, time=0))
    track.append(mido.Message("note_on", channel=9, note=42, velocity=90, time=96))
    mf = mido.MidiFile(ticks_per_beat=96)
    mf.tracks.append(track)
    mf.save(path)


def ingest_cases(root: Path) -> dict[str, tuple[str, Path, list[str]]]:
    out = {}
    for name, shape, dtype in (("velocity", (2_000_000_000, 1), np.uint8), ("sections", (250_000_000, 2), np.int32)):
        d = root / f"npz_{name}"
        d.mkdir(parents=True)
        _npz_claiming(d / "hostile.npz", name, shape, dtype)
        np.savez(d / "good.npz", sequence=(np.random.default_rng(1).random((64, 9)) < .2) * 100)
        out[f"r2_2_npz_2MB_with_a_2GB_{name}"] = ("npz", d, [])
    for n in (2000, 8000):
        d = root / f"tracks{n}"
        good_midis(d)
        _tracks(d / "tracks.mid", n)
        out[f"r2_3_midi_{n}_one_note_tracks"] = ("midi", d, [])
    for total, label in ((2 ** 31 + 1000, "2pow31"), (2 ** 32 + 1000, "2pow32")):
        d = root / f"far{label}"
        good_midis(d)
        _far(d / "far.mid", total)
        out[f"r2_7_midi_ticks_past_{label}"] = ("midi", d, [])
    head = "midi_filename,split,style,bpm\n"
    infos = {"duplicate_rows": head + "good0.mid,train,rock,100\ngood0.mid,test,rock,100\n",
             "no_midi_filename": "filename,split\ngood0.mid,train\n",
             "not_utf8": (head + "good0.mid,train,rock,100\n").encode() + b"\xff\xfe,test,x,1\n",
             "a_folder": None}
    for label, text in infos.items():
        d = root / f"info_{label}"
        good_midis(d)
        if text is None:
            (d / "info.csv").mkdir()
        else:
            (d / "info.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        out[f"r2_8_info_csv_{label}"] = ("midi", d, [])
    d = root / "npz_soft"
    d.mkdir()
    seq = np.zeros((64, 9), np.float32)
    seq[::4, 0] = 1 / 300
    np.savez(d / "soft.npz", sequence=seq)
    out["r2_9_npz_values_under_1_254"] = ("npz", d, [])
    return out


def _child(cmd: list[str], repo: Path, limit: int, **popen) -> dict:
    """Run cmd in a fresh process of `repo` under the address-space limit: exit, peak RSS, last stderr line."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.DEVNULL,
                             stderr=err, preexec_fn=cap, **popen)
        _, status, usage = os.wait4(p.pid, 0)
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    return {"exit": os.waitstatus_to_exitcode(status), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "last_stderr": lines[-1][:240] if lines else ""}


def lock_link(repo: Path, work: Path, limit: int) -> dict:
    """An ingest into a data directory whose .hierdrums.lock is a link to someone's file."""
    data = work / "data"
    data.mkdir(parents=True)
    victim = work / "victim.txt"
    victim.write_text("a file the user can write, e.g. ~/.bashrc\n" * 10)
    before = victim.stat().st_size
    (data / ".hierdrums.lock").symlink_to(victim)
    r = _child([sys.executable, "-m", "pipeline.ingest", f"paths.data_dir={data}", "data.corpus.num_songs=4",
                "ingest.scheduler=synchronous", f"hydra.run.dir={work}/h"], repo, limit)
    return {**r, "victim_bytes_before": before, "victim_bytes_after": victim.stat().st_size}


def huge_checkpoint(repo: Path, work: Path, limit: int) -> dict:
    """A 60 KB checkpoint whose model_config asks for step_hidden_dim=8192."""
    work.mkdir(parents=True)
    path = work / "big.pt"
    code = ("import torch\ntry:\n    from train.model import HierarchicalDrumModel as M\n"   # the model's package
            "    m = M.from_config(dict(num_drums=9, step_hidden_dim=16, bar_hidden_dim=16, phrase_hidden_dim=16))\n"
            "except ImportError:\n    from train.training.model import HierarchicalDrumModel as M\n"   # checkouts before it
            "    m = M(9, step_hidden_dim=16, bar_hidden_dim=16, phrase_hidden_dim=16)\n"
            f"torch.save({{'model': m.state_dict(), 'model_config': {{**m.config, 'step_hidden_dim': 8192}}}}, {str(path)!r})")
    subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    load = ("import sys\nfrom train.training.checkpoint import load_model\n"
            f"try:\n    load_model({str(path)!r})\nexcept ValueError as e:\n    sys.exit(str(e).splitlines()[0][:300])")
    bare = _child([sys.executable, "-c", "import torch\nfrom train.training.checkpoint import load_model"], repo, limit)
    return {**_child([sys.executable, "-c", load], repo, limit), "file_kb": path.stat().st_size // 1024,
            "bare_import_rss_mb": bare["peak_rss_mb"]}


def _built(repo: Path, data: Path, limit: int) -> None:
    for stage in ("ingest", "build", "metrics"):
        r = _child([sys.executable, "-m", f"pipeline.{stage}", f"paths.data_dir={data}", "ingest.scheduler=synchronous",
                    f"hydra.run.dir={data}/h"], repo, limit)
        assert r["exit"] == 0, r


def damaged_store(how: str):
    def case(repo: Path, work: Path, limit: int) -> dict:
        """The built-in corpus (400 songs), one hits chunk deleted or garbled, then the metrics stage."""
        data = work / "data"
        _built(repo, data, limit)
        chunk = data / "store.zarr" / "hits" / "c" / "1" / "0"
        chunk.unlink() if how == "missing" else chunk.write_bytes(chunk.read_bytes()[:9] + b"garbage" * 5)
        r = _child([sys.executable, "-m", "pipeline.metrics", f"paths.data_dir={data}",
                    f"hydra.run.dir={data}/h"], repo, limit)
        return r
    return case


def damaged_store_export(how: str):
    """Export alone (metrics computed while the store was intact), then the chunk damaged."""
    def case(repo: Path, work: Path, limit: int) -> dict:
        data = work / "data"
        _built(repo, data, limit)
        num_hits = json.loads((data / "store.zarr" / "zarr.json").read_text())["attributes"]["num_hits"]
        chunk = data / "store.zarr" / "hits" / "c" / "1" / "0"
        chunk.unlink() if how == "missing" else chunk.write_bytes(chunk.read_bytes()[:9] + b"garbage" * 5)
        export = _child([sys.executable, "-m", "pipeline.export", f"paths.data_dir={data}",
                         f"hydra.run.dir={data}/h"], repo, limit)
        ready = data / "ready" / "hits.npy"
        exported = int(np.load(ready, mmap_mode="r").sum(dtype=np.int64)) if ready.exists() else None
        return {**export, "store_num_hits": num_hits, "hits_exported": exported}
    return case


def sigterm(repo: Path, work: Path, limit: int) -> dict:
    """SIGTERM to a tiny training run in its second epoch (no mid-epoch checkpoints of its own)."""
    import torch

    work.mkdir(parents=True)
    code = ("import sys\nfrom pathlib import Path\nfrom tests.trainer_data import build_tiny_ready\n"
            f"print(' '.join(build_tiny_ready(Path({str(work / 'ready')!r}))))")
    overrides = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                               check=True, capture_output=True, text=True).stdout.split()
    run = work / "run"
    cmd = [sys.executable, "-m", "train", *overrides, f"trainer.run_dir={run}", f"hydra.run.dir={run}/h",
           "trainer.max_epochs=3", "trainer.limit_train_batches=8", "trainer.save_every_n_steps=0"]
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.DEVNULL,
                             stderr=err)
        last = run / "checkpoints" / "last.pt"
        while p.poll() is None:
            try:
                if torch.load(last, weights_only=True)["epoch"] >= 1:
                    break
            except (FileNotFoundError, EOFError, RuntimeError, KeyError):
                pass
            time.sleep(0.005)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    ck = torch.load(last, weights_only=True)
    return {"exit": p.returncode, "last_stderr": lines[-1][:240] if lines else "",
            "checkpoint_step": ck["global_step"], "checkpoint_batch_in_epoch": ck["batch_in_epoch"]}


def other_cases() -> dict:
    return {"r2_1_lock_file_linked_to_a_victim": lock_link,
            "r2_4_checkpoint_asking_for_hidden_8192": huge_checkpoint,
            "r2_6_store_chunk_missing": damaged_store_export("missing"),
            "r2_6_store_chunk_garbled": damaged_store_export("garbled"),
            "r2_6_store_chunk_missing_metrics": damaged_store("missing"),
            "r2_11_sigterm_in_training": sigterm}
