"""pipeline.midi: quantisation of drum MIDI (files written independently with mido) and the writer."""
import mido
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.drums import DrumMap
from pipeline.midi import MidiError, read_midi, steps_per_bar_for, write_midi

DM = DrumMap.default()
TPQ = 96


def _mido_file(path, notes, *, tempos=((0, 500000),), timesig=(4, 4), channel=9, tpq=TPQ):
    """notes: (tick, pitch, velocity[, channel]); one track, absolute ticks -> delta times."""
    events = [(t, mido.MetaMessage("set_tempo", tempo=us, time=0)) for t, us in tempos]
    if timesig:
        events.append((0, mido.MetaMessage("time_signature", numerator=timesig[0], denominator=timesig[1], time=0)))
    for n in notes:
        tick, pitch, vel = n[:3]
        ch = n[3] if len(n) > 3 else channel
        events.append((tick, mido.Message("note_on", note=pitch, velocity=vel, channel=ch, time=0)))
        events.append((tick + 10, mido.Message("note_off", note=pitch, velocity=0, channel=ch, time=0)))
    events.sort(key=lambda e: e[0])
    track, now = mido.MidiTrack(), 0
    for tick, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    mf = mido.MidiFile(ticks_per_beat=tpq)
    mf.tracks.append(track)
    mf.save(path)
    return path


def test_quantise_through_ticks_with_tempo_change_and_max_velocity(tmp_path):
    step = TPQ // 4
    notes = [
        (0, 36, 90),                # kick, step 0
        (step * 4 + 5, 38, 60),     # snare, 5 ticks late -> step 4
        (step * 4 - 4, 40, 110),    # snare (rim) 4 ticks early -> step 4 as well: keep max velocity 110
        (step * 7 + 13, 42, 70),    # 13/24 of a step late -> rounds to step 8
        (step * 9, 39, 50),         # hand clap: not in the map -> counted, dropped
        (step * 9, 39, 51),
        (step * 10, 60, 80, 0),     # not a drum channel: ignored entirely
        (step * 20, 51, 99),        # ride in the second bar
    ]
    # a tempo change mid-file must not move the grid: positions come from ticks / ticks_per_quarter
    path = _mido_file(tmp_path / "a.mid", notes, tempos=((0, 500000), (step * 6, 400000)))
    roll = read_midi(path, DM, steps_per_quarter=4)
    assert roll.hits.shape == (32, 9)          # two whole 4/4 bars of 16 steps
    assert roll.steps_per_bar == 16 and roll.beats_per_bar == 4
    assert roll.bpm == pytest.approx(120.0)
    expected = {(0, 0): 90, (4, 1): 110, (8, 2): 70, (20, 8): 99}
    assert {tuple(map(int, k)): int(roll.velocity[tuple(k)]) for k in np.argwhere(roll.hits)} == expected
    assert roll.notes_mapped == 5
    assert roll.unmapped == {39: 2}


@pytest.mark.parametrize("sig, spq, spb", [((3, 4), 4, 12), ((6, 8), 4, 12), ((5, 8), 4, 10), ((7, 8), 2, 7)])
def test_time_signature_sets_steps_per_bar(tmp_path, sig, spq, spb):
    path = _mido_file(tmp_path / "t.mid", [(0, 36, 100)], timesig=sig)
    roll = read_midi(path, DM, steps_per_quarter=spq)
    assert roll.steps_per_bar == spb and roll.hits.shape[0] == spb and roll.beats_per_bar == sig[0]


def test_non_integer_steps_per_bar_rejected(tmp_path):
    path = _mido_file(tmp_path / "odd.mid", [(0, 36, 100)], timesig=(3, 8))
    with pytest.raises(MidiError, match=r"odd\.mid.*3/8.*1\.5"):
        read_midi(path, DM, steps_per_quarter=1)
    assert steps_per_bar_for(3, 8, 2) == 3


def test_bad_midi_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.mid"
    junk.write_bytes(b"this is not midi at all")
    with pytest.raises(MidiError, match=r"junk\.mid: unreadable MIDI"):
        read_midi(junk, DM)
    piano = _mido_file(tmp_path / "piano.mid", [(0, 60, 80, 0), (24, 64, 80, 0)])
    with pytest.raises(MidiError, match=r"piano\.mid: no drum notes"):
        read_midi(piano, DM)
    claps = _mido_file(tmp_path / "claps.mid", [(0, 39, 80), (24, 39, 80), (48, 54, 80)])
    with pytest.raises(MidiError, match=r"claps\.mid: no drum notes in the mapping.*39: 2.*54: 1"):
        read_midi(claps, DM)


def test_write_midi_is_gm_drums_on_channel_10(tmp_path):
    hits = np.zeros((16, 9), np.uint8)
    hits[0, 0] = hits[4, 1] = hits[6, 8] = 1
    vel = hits * np.uint8(77)
    path = write_midi(tmp_path / "w.mid", hits, vel, drum_map=DM, bpm=90.0)
    mf = mido.MidiFile(path)
    ons, now = [], 0
    tempo = None
    for msg in mido.merge_tracks(mf.tracks):
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            ons.append((now * 4 // mf.ticks_per_beat, msg.note, msg.velocity, msg.channel))
        if msg.type == "set_tempo":
            tempo = mido.tempo2bpm(msg.tempo)
    assert sorted(ons) == [(0, 36, 77, 9), (4, 38, 77, 9), (6, 51, 77, 9)]
    assert tempo == pytest.approx(90.0)
    with pytest.raises(ValueError, match=r"\[T, 9\]"):
        write_midi(tmp_path / "bad.mid", np.zeros((4, 3)), drum_map=DM)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 4).map(lambda b: b * 16), st.just(9)),
              elements=st.integers(0, 127)))
def test_write_then_read_is_identity(tmp_path_factory, vel):
    vel = np.where(vel > 90, vel, 0).astype(np.uint8)
    vel[-1, 0] = max(int(vel[-1, 0]), 1)  # a hit in the last bar, so the length survives
    hits = (vel > 0).astype(np.uint8)
    path = write_midi(tmp_path_factory.mktemp("rt") / "x.mid", hits, vel, drum_map=DM, bpm=133.0)
    roll = read_midi(path, DM)
    np.testing.assert_array_equal(roll.hits, hits)
    np.testing.assert_array_equal(roll.velocity, vel)
    assert roll.bpm == pytest.approx(133.0) and roll.unmapped == {}


def _raw_track_file(path, tracks, tpq=TPQ):
    """A type-1 file from mido tracks of (delta, message) without closing anything: open notes stay open."""
    mf = mido.MidiFile(type=1, ticks_per_beat=tpq)
    for msgs in tracks:
        mf.tracks.append(mido.MidiTrack([m.copy(time=d) for d, m in msgs]))
    mf.save(path)
    return path


def _on(note, vel, ch=9):
    return mido.Message("note_on", channel=ch, note=note, velocity=vel)


def _off(note, ch=9):
    return mido.Message("note_off", channel=ch, note=note, velocity=0)


def test_notes_never_closed_are_read_like_mido(tmp_path):
    """symusic drops note-ons that are never closed; read_midi keeps each one (here up to 6 open
    notes of one pitch, more than the first round of added note-offs closes), in every track."""
    t1 = [(0, _on(36, 90)), (10, _on(36, 80)), (10, _on(38, 70)), (10, _off(38)), (10, _on(36, 60)),
          (10, _off(36))] + [(24, _on(42, 50 + i)) for i in range(6)] + [(5, _on(60, 99, ch=0))]
    t2 = [(48, _on(51, 33)), (0, _on(51, 34)), (30, _off(51))]
    path = _raw_track_file(tmp_path / "open.mid", [t1, t2])
    from pipeline.midi import _drum_onsets
    tick, pitch, vel, *_ = _drum_onsets(path)
    mido_ons = []
    for track in mido.MidiFile(path).tracks:
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "note_on" and msg.velocity and msg.channel == 9:
                mido_ons.append((now, msg.note, msg.velocity))
    assert sorted(zip(tick.tolist(), pitch.tolist(), vel.tolist())) == sorted(mido_ons)
    assert len(mido_ons) == 4 + 6 + 2


def test_offsets_quantise_on_the_128th_subgrid(tmp_path):
    """tick -> (step, offset in 1/128 step): TPQ 96 = 24 ticks per step; the loudest note of a cell
    gives its offset."""
    notes = [(0, 36, 90), (24 * 4 + 3, 38, 60), (24 * 4 - 6, 40, 110), (24 * 8 + 12, 42, 70),
             (24 * 10 + 12, 42, 70), (24 * 13 - 1, 51, 80)]
    roll = read_midi(_mido_file(tmp_path / "o.mid", notes), DM)
    got = {tuple(map(int, k)): int(roll.offset[tuple(k)]) for k in np.argwhere(roll.hits)}
    # 3/24 step = 16/128; -6/24 = -32/128; 12/24 = half a step: step 8 (even) +64, step 10 -> +64
    assert got == {(0, 0): 0, (4, 1): -32, (8, 2): 64, (10, 2): 64, (13, 8): -5}
    assert (roll.offset[roll.hits == 0] == 0).all()


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3).map(lambda b: b * 16), st.just(9)), elements=st.integers(0, 127)),
       st.data())
def test_write_then_read_keeps_offsets(tmp_path_factory, vel, data):
    """Offsets written tick-exact read back identically (half a step only on even steps, as read_midi
    gives them); every note has a non-zero length; a hit at step 0 with a negative offset starts at
    tick 0 (and reads back as offset 0)."""
    vel = np.where(vel > 80, vel, 0).astype(np.uint8)
    vel[-1, 0] = max(int(vel[-1, 0]), 1)
    hits = (vel > 0).astype(np.uint8)
    off = data.draw(arrays(np.int8, hits.shape, elements=st.integers(-64, 64)))
    off = np.where(hits > 0, off, 0).astype(np.int8)
    path = write_midi(tmp_path_factory.mktemp("off") / "x.mid", hits, vel, drum_map=DM, offset=off)
    roll = read_midi(path, DM)
    half = np.where(np.arange(len(off)) % 2 == 0, 64, 63)[:, None]   # what reads back to the same step
    expect = np.clip(off, -half, half).astype(np.int8)
    expect[0] = np.maximum(expect[0], 0)
    np.testing.assert_array_equal(roll.hits, hits)
    np.testing.assert_array_equal(roll.velocity, vel)
    np.testing.assert_array_equal(roll.offset, expect)
    mf = mido.MidiFile(path)
    assert mf.ticks_per_beat == 512
    now, on = 0, {}
    for msg in mf.tracks[0]:
        now += msg.time
        if msg.type == "note_on" and msg.velocity:
            on[msg.note] = now
        elif msg.type in ("note_off", "note_on"):
            assert now > on.pop(msg.note)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 100), st.sampled_from([35, 36, 38, 40, 42, 44, 39]),
                          st.sampled_from([60, 100, 127])), min_size=1, max_size=40))
def test_one_hit_per_cell_is_the_loudest_then_earliest_note_of_any_track(tmp_path_factory, notes):
    """read_midi's sort (tick order across drum tracks, then one stable sort per cell) against the
    rule written out note by note: per (step, class) the loudest note, the earliest of equally loud."""
    from pipeline.midi import quantise

    tracks = [[], []]
    for track, tick, pitch, vel in notes:
        tracks[track] += [(tick, _on(pitch, vel)), (tick + 1, _off(pitch))]
    raw = [[(t - prev, m) for (t, m), prev in zip(sorted(tr, key=lambda e: e[0]), [0] + sorted(e[0] for e in tr))]
           for tr in tracks if tr]
    path = _raw_track_file(tmp_path_factory.mktemp("cells") / "two.mid", raw)
    best = {}
    for tick, pitch, vel in sorted((t, p, v) for _, t, p, v in notes if p in DM.pitch_to_class):
        step, off = quantise(np.array([tick]), TPQ, 4)
        cell = (int(step[0]), DM.pitch_to_class[pitch])
        if cell not in best or vel > best[cell][0]:
            best[cell] = (vel, int(off[0]))
    if not best:
        with pytest.raises(MidiError, match="no drum notes in the mapping"):
            read_midi(path, DM)
        return
    roll = read_midi(path, DM)
    got = {(int(s), int(c)): (int(roll.velocity[s, c]), int(roll.offset[s, c])) for s, c in np.argwhere(roll.hits)}
    assert got == best
