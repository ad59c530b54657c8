"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
python -m train.generate on a tiny real checkpoint: MIDI, NPZ and PNG out, primes, bad input.
The rest is tests/unit/test_generate.py."""
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from common.config import REPO_ROOT
from pipeline.drums import DrumMap
from pipeline.midi import read_midi, write_midi
from tests.tiny_checkpoint import OVERRIDES, SPB, make_checkpoint, make_store
from train.generate.run import run
from train.training.checkpoint import load_for_inference
from tests.unit.test_generate import _cfg, ckpt  # noqa: F401 (fixtures and helpers shared with the unit tests)


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "train.generate", *OVERRIDES, f"hydra.run.dir={tmp_path}/hydra",
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_writes_midi_npz_per_sample_one_sheet_and_says_where(ckpt, tmp_path):
    out = tmp_path / "gen"
    proc = _cli(tmp_path, f"checkpoint={ckpt.parent}", f"generate.out_dir={out}", "generate.num_samples=3",
                "generate.bars=2", "generate.seed=7", "generate.bpm=96", f"generate.report={tmp_path}/none.md",
                "generate.expressive=false", "generate.preview=false")
    assert proc.returncode == 0, proc.stderr
    for i in range(3):
        for suffix in (".mid", ".npz"):
            assert (out / f"sample_{i:03d}{suffix}").is_file()
        assert (out / "preview" / f"sample_{i:03d}.png").is_file()    # each sample's roll: on the page
    assert (out / "sheet.png").is_file() and not list(out.glob("sample_*.png"))   # no duplicate by default
    assert f"{out}/sample_*.mid" in proc.stdout and f"Pictures:   {out}/sheet.png" in proc.stdout
    assert "Report:" in proc.stdout and "96 bpm" in proc.stdout
    dm = DrumMap.default()
    for i in range(3):
        with np.load(out / f"sample_{i:03d}.npz", allow_pickle=False) as npz:
            seq = npz["sequence"]
        assert seq.shape == (2 * SPB, dm.num_drums) and seq.dtype == np.uint8
        assert set(np.unique(seq)) <= {0, 100}
        # MIDI out parses back to the same hits, at the canonical GM pitches, with the fixed velocity
        roll = read_midi(out / f"sample_{i:03d}.mid", dm, 4)
        back = np.zeros_like(seq)
        back[: len(roll.hits)] = roll.hits
        np.testing.assert_array_equal(back, (seq > 0).astype(np.uint8))
        np.testing.assert_array_equal(roll.velocity[roll.hits > 0], 100)
        assert roll.bpm == pytest.approx(96) and roll.steps_per_bar == SPB


def _cli_imports_matplotlib(tmp_path, *args) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `python -m train.generate` and say whether it imported matplotlib."""
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; "
            "sys.modules.pop('matplotlib', None); "
            "import atexit; atexit.register(lambda: print('matplotlib' in sys.modules))\n"
            "runpy.run_module('train.generate', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, "train.generate", *OVERRIDES, f"hydra.run.dir={tmp_path}/h",
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, proc.stdout.strip().splitlines()[-1] == "True"


def test_plots_false_writes_no_pictures_and_never_imports_matplotlib(ckpt, tmp_path):
    out = tmp_path / "gen"
    proc, imported = _cli_imports_matplotlib(tmp_path, f"checkpoint={ckpt}", f"generate.out_dir={out}",
                                             "generate.num_samples=2", "generate.bars=2", "generate.plots=false")
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.mid", "sample_000.npz", "sample_001.mid",
                                                     "sample_001.npz"]
    assert "Pictures:" not in proc.stdout and not imported
    result = run(_cfg(ckpt, tmp_path / "again", "generate.plots=false", "generate.num_samples=1"))
    assert result["sheet"] is None and result["timings"]["sample_s"] > 0 and result["timings"]["plots_s"] >= 0


def test_pictures_and_page_are_drawn_without_matplotlib(ckpt, tmp_path):
    """The sheet, per-sample and page rolls are numpy + Pillow (train/report/rolls.py): importing
    matplotlib and laying out its text was most of generate's time outside sampling."""
    out = tmp_path / "gen"
    proc, imported = _cli_imports_matplotlib(tmp_path, f"checkpoint={ckpt}", f"generate.out_dir={out}",
                                             "generate.num_samples=2", "generate.bars=2", "generate.preview=false",
                                             "generate.sample_pictures=true")
    assert not imported and "Pictures:" in proc.stdout
    for png in ["sheet.png", "sample_000.png", "sample_001.png", "preview/sample_000.png"]:
        assert plt.imread(out / png).shape[1] > 100, png
    assert (out / "index.html").is_file()


def test_joint_model_decodes_with_top_k_top_p_reproducibly(tmp_path):
    """A joint-output checkpoint through `generate`: top-k / nucleus over the drum combinations,
    the same drums for the same seed; a bad top_p is refused with its name."""
    ckpt = make_checkpoint(tmp_path / "run" / "last.pt", make_store(tmp_path / "store.zarr"),
                           train_steps=10, output="joint")
    knobs = ["generate.top_k=4", "generate.top_p=0.9", "generate.temperature=0.8", "generate.bars=2"]
    a = run(_cfg(ckpt, tmp_path / "a", *knobs, "generate.seed=3"))["rolls"]
    b = run(_cfg(ckpt, tmp_path / "b", *knobs, "generate.seed=3"))["rolls"]
    c = run(_cfg(ckpt, tmp_path / "c", *knobs, "generate.seed=4"))["rolls"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == (4, 2 * SPB, 9)
    greedy = run(_cfg(ckpt, tmp_path / "g", "generate.temperature=0", "generate.bars=2"))["rolls"]
    assert (greedy == greedy[0]).all()               # the most likely vector each step: one answer
    with pytest.raises(ValueError, match="top_p must be in"):
        run(_cfg(ckpt, tmp_path / "bad", "generate.top_p=1.5"))


def test_bad_prime_and_unsafe_checkpoint_fail_with_a_message(ckpt, tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: not a readable NPZ"):
        run(_cfg(ckpt, tmp_path / "o", f"generate.prime={tmp_path}/bad.npz"))
    with pytest.raises(ValueError, match=r"prime\.txt: a prime must be"):
        (tmp_path / "prime.txt").write_text("x")
        run(_cfg(ckpt, tmp_path / "o", f"generate.prime={tmp_path}/prime.txt"))
    np.savez(tmp_path / "wide.npz", sequence=np.ones((16, 4)))
    with pytest.raises(ValueError, match=r"wide\.npz.*expected \[steps, 9\]"):
        run(_cfg(ckpt, tmp_path / "o", f"generate.prime={tmp_path}/wide.npz"))
    # A checkpoint that needs pickled code is refused (weights_only), never executed.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "hook": Path("x")}, unsafe)
    proc = _cli(tmp_path, f"checkpoint={unsafe}", f"generate.out_dir={tmp_path}/o")
    assert proc.returncode == 1 and "unsafe.pt" in proc.stderr and "not a loadable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "sample_000.mid").exists()
    # A loadable file that is no model checkpoint is named, not a KeyError.
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: not a hierdrums model checkpoint"):
        run(_cfg(ckpt, tmp_path / "o", f"checkpoint={foreign}"))


def test_humanize_keeps_the_hits_and_plays_them(ckpt, tmp_path):
    """A quantised, fixed-velocity part comes out with the same hits, the heads' velocities and
    offsets (written tick-exact), varied and off the grid; bad calls exit 1 with the reason."""
    from train.humanize import humanize_roll
    from train.model.expressive import to_midi_values

    dm = DrumMap.default()
    rng = np.random.default_rng(0)
    hits = (rng.random((2 * SPB, dm.num_drums)) < 0.25).astype(np.uint8)
    hits[1:, 0] |= (np.arange(1, 2 * SPB) % 4 == 0).astype(np.uint8)
    write_midi(tmp_path / "part.mid", hits, drum_map=dm, bpm=100.0)            # velocity 100, on the grid
    proc = subprocess.run([sys.executable, "-m", "train.humanize", *OVERRIDES, f"checkpoint={ckpt}",
                           f"input={tmp_path / 'part.mid'}", f"output={tmp_path / 'human.mid'}",
                           f"hydra.run.dir={tmp_path}/hydra"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {tmp_path / 'human.mid'}" in proc.stdout
    out = read_midi(tmp_path / "human.mid", dm, 4)
    np.testing.assert_array_equal(out.hits, hits)
    model, _, _ = load_for_inference(ckpt)
    vel, off = to_midi_values(hits, *humanize_roll(model, hits))
    off[0] = np.maximum(off[0], 0)                                             # never before time 0
    np.testing.assert_array_equal(out.velocity, vel)
    np.testing.assert_array_equal(out.offset, off)
    assert len(np.unique(vel[hits > 0])) > 1 and (off[hits > 0] != 0).any() and out.bpm == pytest.approx(100.0)
    missing = subprocess.run([sys.executable, "-m", "train.humanize", *OVERRIDES, f"checkpoint={ckpt}",
                              f"hydra.run.dir={tmp_path}/hydra2"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "set input=" in missing.stderr


def test_sampling_threads_are_set_then_restored_and_leave_the_drums_alone(ckpt, tmp_path):
    from common.config import ConfigError

    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = run(_cfg(ckpt, tmp_path / "a", "generate.plots=false", "generate.num_samples=2"))
        assert one["sample_threads"] == 1 and torch.get_num_threads() == 2     # the default, then the caller's
        default = run(_cfg(ckpt, tmp_path / "b", "generate.plots=false", "generate.num_samples=2",
                           "generate.num_threads=0"))
        assert default["sample_threads"] == 2
        np.testing.assert_array_equal(one["rolls"], default["rolls"])
        with pytest.raises(ConfigError, match="generate.num_threads=-1"):
            run(_cfg(ckpt, tmp_path / "c", "generate.plots=false", "generate.num_threads=-1"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)
