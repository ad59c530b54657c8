"""python -m train.generate on a tiny real checkpoint: MIDI, NPZ and PNG out, primes, bad input."""
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from common.config import REPO_ROOT, compose
from pipeline.drums import DrumMap
from pipeline.midi import read_midi, write_midi
from tests.tiny_checkpoint import OVERRIDES, SPB, make_checkpoint, make_store
from train.generate.run import run
from train.model import sample
from train.training.checkpoint import load_for_inference, resolve_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gen")
    return make_checkpoint(d / "run" / "last.pt", make_store(d / "store.zarr"), train_steps=20)


def _cfg(ckpt, out, *extra):
    return compose(OVERRIDES + [f"checkpoint={ckpt}", f"generate.out_dir={out}", *extra], config_name="generate")


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "train.generate", *OVERRIDES, f"hydra.run.dir={tmp_path}/hydra",
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_expressive_by_default_one_drum_track_varied_and_off_grid(ckpt, tmp_path):
    """The default: the heads' velocity and timing, written tick-exact; pretty_midi reads one drum
    track whose notes all have non-zero length; the NPZ carries velocity and offset."""
    import pretty_midi

    res = run(_cfg(ckpt, tmp_path / "gen", "generate.num_samples=2", "generate.bars=2", "generate.seed=3"))
    dm = DrumMap.default()
    for i, hits in enumerate(res["rolls"]):
        pm = pretty_midi.PrettyMIDI(str(tmp_path / "gen" / f"sample_{i:03d}.mid"))
        assert len(pm.instruments) == 1 and pm.instruments[0].is_drum
        notes = pm.instruments[0].notes
        assert len(notes) == int(hits.sum()) > 0 and all(n.end > n.start >= 0 for n in notes)
        assert len({n.velocity for n in notes}) > 1
        step_s = 60 / res["bpm"] / 4
        assert any(abs(n.start / step_s - round(n.start / step_s)) > 1e-3 for n in notes)
        with np.load(tmp_path / "gen" / f"sample_{i:03d}.npz", allow_pickle=False) as z:
            vel, off = z["velocity"], z["offset"]
        roll = read_midi(tmp_path / "gen" / f"sample_{i:03d}.mid", dm, 4)   # tick-exact: reads back
        n = len(roll.hits)
        np.testing.assert_array_equal(roll.velocity, vel[:n])
        np.testing.assert_array_equal(roll.offset[1:], off[1:n])     # step 0: never before time 0
        assert (off[hits == 0] == 0).all() and (vel[hits > 0] > 0).all()


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


def test_sample_pictures_adds_one_png_per_sample(ckpt, tmp_path):
    result = run(_cfg(ckpt, tmp_path / "gen", "generate.num_samples=2", "generate.bars=2",
                      "generate.sample_pictures=true", "generate.preview=false"))
    assert result["files"]["png"] == [tmp_path / "gen" / f"sample_{i:03d}.png" for i in range(2)]
    for png in result["files"]["png"]:
        img = plt.imread(png)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100


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


@pytest.mark.parametrize("override, meter", [("generate.steps_per_bar=12", (3, 4)),
                                             ("generate.time_signature=6/8", (6, 8))])
def test_a_three_four_and_a_six_eight_part_round_trip_through_ingest(ckpt, tmp_path, override, meter):
    """generate on a 12-step bar (3/4 from the bar, 6/8 named) -> MIDI with that time signature ->
    the MIDI ingest and build -> the store holds the same hits, velocities and the meter."""
    from pipeline.build import build
    from pipeline.ingest import ingest
    from pipeline.store import Store

    out = tmp_path / "gen"
    res = run(_cfg(ckpt, out, "generate.num_samples=3", "generate.bars=4", "generate.seed=5",
                   "generate.plots=false", override))
    assert res["time_signature"] == f"{meter[0]}/{meter[1]}" and res["steps_per_bar"] == 12
    assert res["rolls"].shape == (3, 4 * 12, 9) and res["rolls"].sum() > 0
    four = run(_cfg(ckpt, tmp_path / "four", "generate.num_samples=3", "generate.bars=3", "generate.seed=5",
                    "generate.plots=false"))
    assert four["time_signature"] == "4/4" and four["rolls"].shape[1] == 48
    assert not np.array_equal(four["rolls"], res["rolls"])        # the same seed on another bar grid
    cfg = compose(["data=midi", f"data.path={out}", f"paths.data_dir={tmp_path / 'data'}",
                   "ingest.scheduler=synchronous"])
    ingest(cfg)
    build(cfg)
    store = Store(tmp_path / "data" / "store.zarr")
    assert store.num_songs == 3
    for j in range(store.num_songs):
        i = int(str(store.meta["source"][j]).removesuffix(".mid").split("_")[-1])
        with np.load(out / f"sample_{i:03d}.npz", allow_pickle=False) as z:
            velocity = z["velocity"]
        got = np.asarray(store.hits[store.song_slice(j)])
        T = len(got)                       # the MIDI file ends with the bar of its last note
        assert T % 12 == 0 and T <= 48 and not res["rolls"][i][T:].any()
        np.testing.assert_array_equal(got, res["rolls"][i][:T])
        np.testing.assert_array_equal(np.asarray(store.velocity[store.song_slice(j)]), velocity[:T])
        assert (int(store.meta["steps_per_bar"][j]), int(store.meta["beats_per_bar"][j])) == (12, meter[0])


def test_humanize_plays_a_six_eight_part_on_its_own_bar(ckpt, tmp_path):
    from train.humanize import humanize_roll
    from train.humanize import run as humanize
    from train.model.expressive import to_midi_values

    dm = DrumMap.default()
    hits = np.zeros((24, dm.num_drums), np.uint8)
    hits[::6, 0] = hits[3::6, 2] = 1
    write_midi(tmp_path / "jig.mid", hits, drum_map=dm, bpm=90.0, beats_per_bar=6, beat_unit=8)
    humanize(compose(OVERRIDES + [f"checkpoint={ckpt}", f"input={tmp_path / 'jig.mid'}",
                                  f"output={tmp_path / 'human.mid'}"], config_name="humanize"))
    out = read_midi(tmp_path / "human.mid", dm, 4)
    assert (out.steps_per_bar, out.beats_per_bar) == (12, 6)
    np.testing.assert_array_equal(out.hits, hits)
    model, _, _ = load_for_inference(ckpt)
    vel, _ = to_midi_values(hits, *humanize_roll(model, hits, 12))
    np.testing.assert_array_equal(out.velocity, vel)
    assert not np.array_equal(vel, to_midi_values(hits, *humanize_roll(model, hits))[0])   # read on 12, not 16


def test_meter_config_errors_name_the_key(ckpt, tmp_path):
    with pytest.raises(ValueError, match="generate.time_signature='3-4'"):
        run(_cfg(ckpt, tmp_path / "a", "generate.time_signature='3-4'"))
    with pytest.raises(ValueError, match="a bar of 12 steps, but generate.steps_per_bar=16"):
        run(_cfg(ckpt, tmp_path / "b", "generate.time_signature=6/8", "generate.steps_per_bar=16"))
    with pytest.raises(ValueError, match=r"5/4 bar \(20 steps\).*bars of 1..16 steps"):
        run(_cfg(ckpt, tmp_path / "c", "generate.steps_per_bar=20"))


def test_same_seed_same_drums_other_seed_other_drums(ckpt):
    model, _, _ = load_for_inference(ckpt)
    a, b, c = (sample(model, 3, 32, num_drums=9, seed=s, batch_size=2) for s in (3, 3, 4))
    assert a.shape == (3, 32, 9) and set(np.unique(a)) <= {0, 1}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() > 0


def test_prime_from_npz_and_midi_is_kept_and_continued(ckpt, tmp_path):
    dm = DrumMap.default()
    rng = np.random.default_rng(0)
    groove = (rng.random((3 * SPB, dm.num_drums)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "prime.npz", sequence=groove * 80)
    write_midi(tmp_path / "prime.mid", groove, drum_map=dm, bpm=101.0)
    for prime in ("prime.npz", "prime.mid"):
        res = run(_cfg(ckpt, tmp_path / f"out_{prime}", f"generate.prime={tmp_path / prime}", "generate.prime_bars=2",
                       "generate.bars=1", "generate.num_samples=1"))
        assert res["rolls"].shape == (1, 3 * SPB, dm.num_drums)
        np.testing.assert_array_equal(res["rolls"][0, : 2 * SPB], groove[: 2 * SPB])
        assert res["prime_steps"] == 2 * SPB
    assert res["bpm"] == pytest.approx(101.0)   # the MIDI prime's tempo when none is given


def test_prime_is_written_as_played_and_its_dynamics_carried(ckpt, tmp_path):
    """A played MIDI prime keeps its velocities and offsets in the output, and the expressive
    history reads them: the same continuation (same seed, so the same hits) is played otherwise
    after a soft prime than after a loud one. A 0/1 NPZ prime is hits only: generate.velocity."""
    dm = DrumMap.default()
    rng = np.random.default_rng(1)
    groove = (rng.random((3 * SPB, dm.num_drums)) < 0.3).astype(np.uint8)
    vel = (groove * rng.integers(20, 128, groove.shape)).astype(np.uint8)
    off = (groove * rng.integers(-40, 41, groove.shape)).astype(np.int8)
    off[0] = 0                                                # step 0 never lands before time 0
    write_midi(tmp_path / "played.mid", groove, vel, drum_map=dm, offset=off)
    res = run(_cfg(ckpt, tmp_path / "out", f"generate.prime={tmp_path}/played.mid", "generate.prime_bars=2",
                   "generate.bars=2", "generate.num_samples=1", "generate.seed=4", "generate.plots=false"))
    back = read_midi(tmp_path / "out" / "sample_000.mid", dm, 4)
    assert res["rolls"].shape == (1, 4 * SPB, dm.num_drums)
    np.testing.assert_array_equal(back.velocity[:2 * SPB], vel[:2 * SPB])
    np.testing.assert_array_equal(back.offset[:2 * SPB], off[:2 * SPB])
    model = load_for_inference(ckpt)[0]
    prime, zero = groove[:2 * SPB], np.zeros((2 * SPB, dm.num_drums))
    soft, loud = (sample(model, 2, 2 * SPB, num_drums=dm.num_drums, prime=prime, seed=4, expressive=True,
                         prime_played=(prime * v, zero)) for v in (0.2, 0.95))
    np.testing.assert_array_equal(soft[0], loud[0])            # the hit model reads no velocities
    np.testing.assert_allclose(soft[1][:, :2 * SPB], np.broadcast_to(prime * 0.2, (2, 2 * SPB, dm.num_drums)))
    assert np.abs(soft[1][:, 2 * SPB:] - loud[1][:, 2 * SPB:]).max() > 1e-4
    np.savez(tmp_path / "hits.npz", sequence=groove)
    run(_cfg(ckpt, tmp_path / "npz", f"generate.prime={tmp_path}/hits.npz", "generate.prime_bars=2",
             "generate.bars=1", "generate.num_samples=1", "generate.plots=false", "generate.velocity=90"))
    back = read_midi(tmp_path / "npz" / "sample_000.mid", dm, 4)
    np.testing.assert_array_equal(back.velocity[:2 * SPB], groove[:2 * SPB] * 90)
    assert not back.offset[:2 * SPB].any()


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


def test_resolve_checkpoint_prefers_the_best_file(tmp_path):
    for name in ("last.pt", "best_epoch_3_loss_0.5000.pt", "best_epoch_7_loss_0.4000.pt", "epoch_7.pt"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_checkpoint(tmp_path).name == "best_epoch_7_loss_0.4000.pt"
    (tmp_path / "best.pt").write_bytes(b"")   # the trainer's stable name for the best (save_top_k=0 too)
    assert resolve_checkpoint(tmp_path).name == "best.pt"
    (tmp_path / "best.pt").unlink()
    (tmp_path / "best_epoch_3_loss_0.5000.pt").unlink()
    (tmp_path / "best_epoch_7_loss_0.4000.pt").unlink()
    assert resolve_checkpoint(tmp_path).name == "last.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "missing")


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
