"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
Hostile cases, round two: each test fails without the fix it names (lock files that follow links.
The rest is tests/unit/test_hardening_round2.py."""
import os

import numpy as np

from common.lock import hold
from tests.unit.test_hardening_round2 import _tiny_model_checkpoint  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_exact_track_ticks_agree_with_mido_on_groove_files(groove_dir):
    import mido

    from pipeline.midi import _track_ticks

    for f in sorted(groove_dir.rglob("*.mid"))[:20]:
        data = f.read_bytes()
        ours, pos = [], 14
        while pos + 8 <= len(data):
            size = int.from_bytes(data[pos + 4:pos + 8], "big")
            ours.append(_track_ticks(data[pos + 8:pos + 8 + size]))
            pos += 8 + size
        assert ours == [sum(m.time for m in t) for t in mido.MidiFile(f).tracks], f


def _peak_rss_mb(code: str) -> tuple[int, str]:
    """Run `code` in a fresh interpreter of this checkout; (its peak RSS in MB, its stdout)."""
    import subprocess
    import sys
    import tempfile

    from common.config import REPO_ROOT

    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=out, stderr=out,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        _, status, usage = os.wait4(p.pid, 0)
        out.seek(0)
        text = out.read().decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    return usage.ru_maxrss // 1024, text


def test_a_midi_of_2000_one_note_tracks_reads_in_bounded_memory(tmp_path):
    import mido

    mf = mido.MidiFile(type=1, ticks_per_beat=96)
    for i in range(2000):
        mf.tracks.append(mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90,
                                                      time=24 * (i % 64))]))
    mf.save(tmp_path / "tracks.mid")
    assert (tmp_path / "tracks.mid").stat().st_size < 40_000
    base, _ = _peak_rss_mb("import pipeline.midi")
    peak, out = _peak_rss_mb(
        "from pipeline.midi import read_midi; from pipeline.drums import DrumMap\n"
        f"r = read_midi({str(tmp_path / 'tracks.mid')!r}, DrumMap.default(), max_steps=65536)\n"
        "print(r.hits.shape, int(r.hits.sum()))")
    assert out.split() == ["(64,", "9)", "64"]
    assert peak - base < 100, (base, peak)    # 1,127 MB before the per-track count


def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_it_is_built(tmp_path):
    path = _tiny_model_checkpoint(tmp_path / "big.pt", step_hidden_dim=8192)
    assert path.stat().st_size < 200_000
    base, _ = _peak_rss_mb("import torch; from train.training.checkpoint import load_model")
    peak, out = _peak_rss_mb(
        "from train.training.checkpoint import load_model\n"
        f"try:\n    load_model({str(path)!r})\nexcept ValueError as e:\n    print(e)")
    assert "weights do not fit its model_config" in out and "(16, 16) vs (8192, 16)" in out
    assert len(out.strip().splitlines()) == 1
    assert peak - base < 200, (base, peak)    # 3.3 GB above the imports before the check


def test_a_second_evaluate_into_one_report_folder_stops_naming_the_first(tmp_path):
    import subprocess
    import sys

    from common.config import REPO_ROOT
    from common.lock import RUN_LOCK

    out = tmp_path / "report"
    with hold(out / RUN_LOCK, "report folder"):     # the first evaluate, still writing
        r = subprocess.run([sys.executable, "-m", "train.evaluate", f"evaluate.out_dir={out}",
                            f"checkpoint={tmp_path / 'none.pt'}", f"hydra.run.dir={tmp_path / 'h'}"],
                           cwd=REPO_ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"evaluate: report folder {out} (evaluate) is in use by pid")


def test_a_long_npz_ingests_within_3x_its_array_bytes(tmp_path):
    rows = 3_000_000
    for name, n in (("small", 64), ("big", rows)):
        seq = np.zeros((n, 9), np.uint8)
        seq[::4, 0] = 100
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "x.npz", sequence=seq)
    del seq

    def peak(name):
        return _peak_rss_mb(
            "from common.config import compose\nfrom pipeline.ingest import ingest\n"
            f"r = ingest(compose(['data=npz', 'data.path={tmp_path / name}', 'paths.data_dir={tmp_path / name}_out',"
            f" 'ingest.scheduler=synchronous', 'ingest.max_steps={rows}']))\nprint(r['steps'])")

    (base, _), (big, out) = peak("small"), peak("big")
    assert out.split()[-1] == str(rows)
    array_mb = rows * 9 / 2 ** 20
    assert big - base < 3 * array_mb, (base, big, array_mb)   # 8.8x before
