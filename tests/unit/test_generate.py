"""python -m train.generate on a tiny real checkpoint: MIDI, NPZ and PNG out, primes, bad input."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from common.config import compose
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

def test_sample_pictures_adds_one_png_per_sample(ckpt, tmp_path):
    result = run(_cfg(ckpt, tmp_path / "gen", "generate.num_samples=2", "generate.bars=2",
                      "generate.sample_pictures=true", "generate.preview=false"))
    assert result["files"]["png"] == [tmp_path / "gen" / f"sample_{i:03d}.png" for i in range(2)]
    for png in result["files"]["png"]:
        img = plt.imread(png)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100

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
