"""Hostile inputs, two writers at once, damaged stores, big checkpoints and stop signals, against
any checkout (round one: ingest cases 1, 2 and 6; round two: every `r2_` case).

    python -m benchmarks.hostile                       # this checkout
    git archive <commit> | tar -x -C /tmp/before && python -m benchmarks.hostile --repo /tmp/before
    python -m benchmarks.hostile --only r2_            # the cases whose name starts so

Each case runs a CLI of `--repo` (or a few lines of its code) in a fresh process and prints one JSON
line: exit code, the child's peak RSS (wait4), the last stderr line, and what the case is about
(songs kept / files skipped from ingest_report.json, a victim file's bytes, hits exported, the
checkpoint step). Children run under an address-space limit (`--limit-gb`, default 3) so a file
asking for gigabytes fails fast instead of swapping the machine. The round-two cases live in
benchmarks/hostile_r2.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np


def midi(path: Path, notes, tempo=500000, tpq=96):
    """One drum track; notes: (tick, pitch). tpq=1: a tick is a quarter note (4 steps)."""
    track, now = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo, time=0)]), 0
    for tick, pitch in notes:
        track.append(mido.Message("note_on", channel=9, note=pitch, velocity=90, time=tick - now))
        now = tick
    mf = mido.MidiFile(ticks_per_beat=tpq)
    mf.tracks.append(track)
    mf.save(path)


def good_midis(folder: Path, n: int = 3):
    folder.mkdir(parents=True)
    for i in range(n):
        midi(folder / f"good{i}.mid", [(24 * k, 36 if k % 2 else 42) for k in range(64)])


def cases(root: Path) -> dict[str, tuple[str, Path, list[str]]]:
    """name -> (source, input folder, extra overrides)."""
    out = {}
    d = root / "npz_nodrums"
    d.mkdir(parents=True)
    for i in range(3):
        np.savez(d / f"good{i}.npz", sequence=(np.random.default_rng(i).random((64, 9)) < .2) * 100)
    np.savez(d / "nodrums.npz", sequence=np.zeros((64, 0)))
    out["1_npz_zero_drum_columns"] = ("npz", d, [])
    d = root / "midi_tempo0"
    good_midis(d)
    midi(d / "tempo0.mid", [(0, 36)], tempo=0)
    out["1_midi_tempo_0"] = ("midi", d, [])
    d = root / "midi_far_note"
    good_midis(d)
    midi(d / "far.mid", [(2 ** 28, 36)], tpq=1)     # 37 bytes; 2**30 steps x 9 drums = 9 GiB
    out["2_midi_note_at_tick_2pow28"] = ("midi", d, [])
    d = root / "midi_long"
    good_midis(d)
    midi(d / "long.mid", [(10 ** 7, 36)], tpq=1)    # a 40-million-step song
    out["2_midi_note_at_tick_1e7"] = ("midi", d, [])
    d = root / "npz_big"
    d.mkdir()
    big = np.zeros((5_000_000, 9), np.uint8)
    big[::4, 0] = 100
    np.savez(d / "big.npz", sequence=big)
    out["2_npz_45MB_5Mx9_uint8"] = ("npz", d, ["++ingest.max_steps=6000000"])  # ++: a new key in older checkouts
    return out


def run_case(repo: Path, source: str, inp: Path, extra: list[str], out: Path, limit: int) -> dict:
    cmd = [sys.executable, "-m", "pipeline.ingest", f"data={source}", f"data.path={inp}",
           f"paths.data_dir={out}", "ingest.scheduler=synchronous", f"hydra.run.dir={out}/hydra", *extra]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    report = out / "ingest_report.json"
    rep = json.loads(report.read_text()) if report.exists() else {}
    interim = out / "interim"
    size = sum(f.stat().st_size for f in interim.rglob("*") if f.is_file()) if interim.exists() else 0
    return {"exit": p.returncode, "songs": rep.get("songs"), "skipped": rep.get("skipped_count"),
            "steps": rep.get("steps"), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "interim_mb": round(size / 2 ** 20, 1), "last_stderr": lines[-1][:200] if lines else "",
            "skip_reasons": [s["reason"].split(": ", 1)[1][:120] for s in rep.get("skipped", [])]}


def two_writers(repo: Path, out: Path) -> dict:
    """Two ingests of the built-in corpus into one data directory, the second 1 s after the first."""
    def start(songs):
        return subprocess.Popen([sys.executable, "-m", "pipeline.ingest", f"paths.data_dir={out}",
                                 f"data.corpus.num_songs={songs}", "ingest.scheduler=synchronous",
                                 f"hydra.run.dir={out}/hydra{songs}"], cwd=repo, text=True,
                                env={**os.environ, "PYTHONPATH": str(repo)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    a = start(400)
    time.sleep(1.0)
    b = start(50)
    (_, _), (_, eb) = a.communicate(), b.communicate()
    songs = json.loads((out / "ingest_report.json").read_text())["songs"] if (out / "ingest_report.json").exists() else None
    last = [ln for ln in eb.splitlines() if ln.strip()]
    return {"first_exit": a.returncode, "second_exit": b.returncode, "songs_in_the_data_dir": songs,
            "second_stderr": last[-1][:240] if last else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--limit-gb", type=float, default=3.0)
    ap.add_argument("--only", default="", help="run only the cases whose name starts with this")
    args = ap.parse_args()
    repo = args.repo.resolve()
    limit = int(args.limit_gb * 2 ** 30)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from benchmarks import hostile_r2

        ingest_cases = {**cases(tmp / "in"), **hostile_r2.ingest_cases(tmp / "in2")}
        for name, (source, inp, extra) in ingest_cases.items():
            if name.startswith(args.only):
                r = run_case(repo, source, inp, extra, tmp / "out" / name, limit)
                print(json.dumps({"case": name, **r}), flush=True)
        if "6_two_ingests_one_data_dir".startswith(args.only):
            print(json.dumps({"case": "6_two_ingests_one_data_dir", **two_writers(repo, tmp / "two")}), flush=True)
        for name, case in hostile_r2.other_cases().items():
            if name.startswith(args.only):
                print(json.dumps({"case": name, **case(repo, tmp / "other" / name, limit)}), flush=True)


if __name__ == "__main__":
    main()
