"""The compiled kernels against their numpy definition (kernels.reference), plus invariants."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import kernels
import kernels.reference as ref
from kernels.codes import ngram_ids, pattern_ids
from kernels.spec import WINDOW_SCHEMA

METERS = [(16, 4), (12, 3), (12, 4), (8, 2), (4, 4)]   # 4/4 and 3/4 at 16ths, 12/8, small bars
# tests/e2e/test_kernels_nojit.py reruns this file with the kernels as plain Python, on fewer examples
SETTINGS = settings(max_examples=int(os.environ.get("HIERDRUMS_KERNEL_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rolls(draw, max_T=90):
    T = draw(st.integers(0, max_T))
    D = draw(st.sampled_from([1, 2, 3, 9, 16]))
    kind = draw(st.sampled_from(["random", "random", "random", "silent", "full"]))
    if kind == "silent":
        return np.zeros((T, D), np.uint8)
    if kind == "full":
        return np.full((T, D), 3, np.uint8)                # any value > 0 is a hit
    return draw(arrays(np.uint8, (T, D), elements=st.sampled_from([0, 0, 0, 1, 100])))


@st.composite
def window_kwargs(draw):
    spb, bpb = draw(st.sampled_from(METERS))
    return dict(seq_len=draw(st.integers(1, 48)), stride=draw(st.integers(1, 5)), steps_per_bar=spb,
                beats_per_bar=bpb, ngram_n=draw(st.integers(1, 5)),
                fast_threshold=draw(st.integers(0, 6)),
                dense_threshold=draw(st.sampled_from([None, 0, 1, 2.5])),
                bars_per_phrase=draw(st.integers(1, 4)))


def assert_same(got: dict, want: dict, rtol=2e-6, atol=2e-6):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        if np.issubdtype(want[k].dtype, np.integer):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


# --- kernels == reference ---------------------------------------------------------------------

@SETTINGS
@given(roll=rolls(), kw=window_kwargs())
@example(roll=np.zeros((0, 9), np.uint8), kw=dict(seq_len=16))                       # T = 0
@example(roll=np.ones((1, 1), np.uint8), kw=dict(seq_len=16))                        # T = 1, D = 1
@example(roll=np.ones((3, 16), np.uint8), kw=dict(seq_len=16, ngram_n=4))            # T < n
@example(roll=np.eye(16, dtype=np.uint8)[np.arange(40) % 16], kw=dict(seq_len=40))   # T = seq_len
@example(roll=np.ones((64, 16), np.uint8), kw=dict(seq_len=32, stride=7))            # all hit
@example(roll=np.zeros((64, 9), np.uint8), kw=dict(seq_len=24, steps_per_bar=12, beats_per_bar=3))
def test_window_metrics_match_reference(roll, kw):
    assert_same(kernels.window_metrics(roll, **kw), ref.window_metrics(roll, **kw))


@SETTINGS
@given(roll=rolls(max_T=150), meter=st.sampled_from(METERS), bars_per_phrase=st.integers(1, 3),
       ngram_n=st.integers(1, 5))
def test_song_section_bar_phrase_match_reference(roll, meter, bars_per_phrase, ngram_n):
    spb = meter[0]
    kw = dict(steps_per_bar=spb, bars_per_phrase=bars_per_phrase)
    assert_same(kernels.song_metrics(roll, ngram_n=ngram_n, **kw),
                ref.song_metrics(roll, ngram_n=ngram_n, **kw), rtol=1e-9, atol=1e-12)
    assert_same(kernels.section_metrics(roll, **kw), ref.section_metrics(roll, **kw), rtol=1e-9)
    T = len(roll)
    if T >= 2:
        sections = [(0, T // 2), (T // 3, T)]             # overlapping sections are allowed
        assert_same(kernels.section_metrics(roll, sections, **kw),
                    ref.section_metrics(roll, sections, **kw), rtol=1e-9)
    np.testing.assert_array_equal(kernels.bar_means(roll, steps_per_bar=spb),
                                  ref.bar_means(roll, steps_per_bar=spb))
    np.testing.assert_array_equal(kernels.phrase_means(roll, **kw), ref.phrase_means(roll, **kw))


def test_fixed_widths_for_other_meters():
    """The stage's table widths: 3/4 songs keep seq_len // 16 bar columns and 16 IOI bins."""
    rng = np.random.default_rng(3)
    roll = (rng.random((100, 9)) < 0.4).astype(np.uint8)
    kw = dict(seq_len=64, steps_per_bar=12, beats_per_bar=3, num_bars=4, ioi_bins=16)
    got, want = kernels.window_metrics(roll, **kw), ref.window_metrics(roll, **kw)
    assert_same(got, want)
    assert got["bar_hits"].shape[1] == 4 and got["ioi_hist"].shape[1] == 16
    # 64 // 12 = 5 complete chunks, but only the first 4 have a column
    np.testing.assert_array_equal(got["bar_hits"][0], [roll[k * 12:(k + 1) * 12].sum() for k in range(4)])


# --- exactness of the n-gram ids ---------------------------------------------------------------

@pytest.mark.parametrize("D, n", [(9, 4), (16, 4), (21, 3), (70, 2)])   # packed, chained, wide kit
def test_ngram_ids_are_exact(D, n):
    rng = np.random.default_rng(D)
    base = (rng.random((12, D)) < 0.5).astype(np.uint8)
    hits = base[rng.integers(0, 12, 3000)]               # many repeats of few patterns
    ids, k = ngram_ids(hits, n)
    keys = [hits[s:s + n].tobytes() for s in range(len(hits) - n + 1)]
    assert k == len(set(keys))
    first = {}
    for key, i in zip(keys, ids):                        # same n-gram <=> same id
        assert first.setdefault(key, i) == i
    assert len(set(first.values())) == k
    pats, P = pattern_ids(hits)
    assert P == len({row.tobytes() for row in hits})


def test_long_song_entropy_does_not_drift():
    """Sliding over 30k steps: late windows still equal a fresh computation of that window."""
    rng = np.random.default_rng(5)
    hits = (rng.random((30_000, 4)) < 0.3).astype(np.uint8)
    got = kernels.window_metrics(hits, seq_len=50, ngram_n=3)
    for a in [0, 12_345, 29_950]:
        one = ref.window_metrics(hits[a:a + 50], seq_len=50, ngram_n=3)
        assert got["ngram_unique"][a] == one["ngram_unique"][0]
        np.testing.assert_allclose(got["ngram_entropy"][a], one["ngram_entropy"][0], rtol=1e-6)


# --- invariants --------------------------------------------------------------------------------

@SETTINGS
@given(roll=rolls(), kw=window_kwargs())
def test_ranges(roll, kw):
    m = kernels.window_metrics(roll, **kw)
    D = roll.shape[1]
    for name in ("drum_density", "co_occurrence", "syncopation", "transitions", "dense_bar_fraction",
                 "bar_sim_lag1", "bar_sim_lag2", "bar_sim_lag4", "bar_repeat_rate", "fill_position",
                 "fill_at_phrase_end"):
        assert ((m[name] >= 0) & (m[name] <= 1)).all(), name
    assert (m["transitions"].sum(axis=2) <= D + 1e-5).all()
    assert ((m["max_hits"] >= 0) & (m["max_hits"] <= D)).all()
    assert (m["avg_hits"] <= m["max_hits"] + 1e-6).all()
    assert (m["ngram_entropy"] >= 0).all()
    assert (m["ngram_entropy"] <= np.log2(np.maximum(m["ngram_unique"], 1)) + 1e-5).all()
    assert (m["fast_hits"] <= m["ioi_hist"].sum(axis=1)).all()


@SETTINGS
@given(roll=rolls(), kw=window_kwargs(), data=st.data())
def test_permuting_drums_permutes_per_drum_metrics(roll, kw, data):
    perm = np.array(data.draw(st.permutations(range(roll.shape[1]))), dtype=np.int64)
    a, b = kernels.window_metrics(roll, **kw), kernels.window_metrics(roll[:, perm], **kw)
    for name in ("drum_density", "ioi_mean", "ioi_var"):
        np.testing.assert_array_equal(b[name], a[name][:, perm], err_msg=name)
    np.testing.assert_array_equal(b["transitions"], a["transitions"][:, perm][:, :, perm])
    for name in set(WINDOW_SCHEMA) - {"drum_density", "ioi_mean", "ioi_var", "transitions"}:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, err_msg=name)   # drum-order free


@SETTINGS
@given(roll=rolls(), kw=window_kwargs(), k=st.integers(2, 6))
def test_stride_k_rows_are_every_kth_row_of_stride_1(roll, kw, k):
    one = kernels.window_metrics(roll, **{**kw, "stride": 1})
    kth = kernels.window_metrics(roll, **{**kw, "stride": k})
    for name in WINDOW_SCHEMA:
        np.testing.assert_array_equal(kth[name], one[name][::k], err_msg=name)


@SETTINGS
@given(roll=rolls(), meter=st.sampled_from(METERS), bars=st.integers(1, 4), stride=st.integers(1, 4))
def test_bar_hits_sum_to_window_hits(roll, meter, bars, stride):
    spb, bpb = meter
    seq_len = bars * spb
    m = kernels.window_metrics(roll, seq_len=seq_len, stride=stride, steps_per_bar=spb, beats_per_bar=bpb)
    starts, L = kernels.window_grid(len(roll), seq_len, stride)
    if L == seq_len:                                     # full windows: every step is in a bar
        H = np.array([(roll[a:a + L] > 0).sum() for a in starts])
        np.testing.assert_array_equal(m["bar_hits"].sum(axis=1), H)
        np.testing.assert_allclose(m["avg_hits"] * L, H, rtol=1e-6)


@SETTINGS
@given(roll=rolls(max_T=150), meter=st.sampled_from(METERS))
def test_whole_song_window_agrees_with_song_metrics(roll, meter):
    if len(roll) == 0:
        return
    spb, bpb = meter
    w = kernels.window_metrics(roll, seq_len=len(roll), steps_per_bar=spb, beats_per_bar=bpb)
    s = kernels.song_metrics(roll, steps_per_bar=spb)
    assert len(w["avg_hits"]) == 1
    np.testing.assert_allclose(w["avg_hits"][0], s["avg_hits"], rtol=1e-6)
    assert w["max_hits"][0] == s["max_hits"]
    np.testing.assert_allclose(w["drum_density"][0], s["drum_density"], rtol=1e-6)
    if len(roll) >= 4:
        assert w["ngram_unique"][0] == s["ngram_diversity"]


# --- hand-checked values and errors -------------------------------------------------------------

def test_hand_computed_window():
    # kick on every beat, snare on 2 and 4 of one 4/4 bar at 16ths, hat on the off-8ths
    roll = np.zeros((16, 3), np.uint8)
    roll[[0, 4, 8, 12], 0] = 1
    roll[[4, 12], 1] = 1
    roll[[2, 6, 10, 14], 2] = 1
    m = kernels.window_metrics(roll, seq_len=16, steps_per_bar=16, beats_per_bar=4, ngram_n=2,
                               fast_threshold=2)
    assert m["avg_hits"][0] == pytest.approx(10 / 16) and m["max_hits"][0] == 2
    assert m["co_occurrence"][0] == pytest.approx(2 / 16)
    assert m["syncopation"][0] == pytest.approx(4 / 10)          # only the hats are off the beat
    np.testing.assert_allclose(m["ioi_mean"][0], [4, 8, 4])
    np.testing.assert_allclose(m["ioi_var"][0], [0, 0, 0])
    assert m["ioi_hist"][0, 3] == 6 and m["ioi_hist"][0, 7] == 1 and m["fast_hits"][0] == 0
    assert m["transitions"][0].sum() == 0                        # nothing follows at t+1
    assert m["bar_hits"][0, 0] == 10 and m["dense_bar_fraction"][0] == pytest.approx(1.0)
    # 15 2-grams, distinct: (K,0) (0,H) (H,0) (0,KS) (KS,0) (0,K)
    assert m["ngram_unique"][0] == 6


def test_phase_comes_from_absolute_time():
    roll = np.zeros((20, 1), np.uint8)
    roll[4, 0] = 1                                        # on beat 2 of bar 1
    m = kernels.window_metrics(roll, seq_len=8, stride=1, steps_per_bar=16, beats_per_bar=4)
    # windows starting at 0..4 contain step 4; it is on the beat whatever the window start
    np.testing.assert_array_equal(m["syncopation"][:5], 0)


@pytest.mark.parametrize("call, msg", [
    (lambda: kernels.window_metrics(np.zeros((4, 2)), seq_len=4, steps_per_bar=10, beats_per_bar=4),
     "whole number of beats"),
    (lambda: kernels.window_metrics(np.zeros(4), seq_len=4), "2-D"),
    (lambda: kernels.window_metrics(np.zeros((4, 2)), seq_len=0), "seq_len"),
    (lambda: kernels.window_metrics(np.zeros((4, 2)), seq_len=4, stride=0), "stride"),
    (lambda: kernels.section_metrics(np.zeros((8, 2)), [(2, 9)]), "section 0"),
    (lambda: kernels.window_metrics(np.zeros((4, 300)), seq_len=4, steps_per_bar=256), "uint16"),
    (lambda: ref.window_metrics(np.zeros((4, 2)), seq_len=4, steps_per_bar=10, beats_per_bar=4),
     "whole number of beats"),
])
def test_bad_arguments_are_rejected_with_a_reason(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


# --- velocity and timing (kernels/playing.py) -------------------------------------------------

from kernels import expressive_metrics  # noqa: E402


@st.composite
def performances(draw, max_T=90):
    """(hits, velocity, offset): any roll; velocities and offsets anywhere (off-hit values are ignored)."""
    hits = draw(rolls(max_T))
    vel = draw(arrays(np.uint8, hits.shape, elements=st.integers(0, 127)))
    off = draw(arrays(np.int8, hits.shape, elements=st.integers(-64, 64)))
    return hits, vel, off


@SETTINGS
@given(perf=performances(), kw=window_kwargs(), positions=st.sampled_from([None, 4, 16]))
@example(perf=(np.zeros((0, 9), np.uint8),) * 3, kw=dict(seq_len=16), positions=None)
@example(perf=(np.ones((64, 2), np.uint8), np.full((64, 2), 127, np.uint8), np.full((64, 2), 64, np.int8)),
         kw=dict(seq_len=32, stride=7), positions=None)
def test_expressive_metrics_match_reference(perf, kw, positions):
    kw = {k: kw[k] for k in ("seq_len", "stride", "steps_per_bar", "beats_per_bar") if k in kw}
    assert_same(expressive_metrics(*perf, **kw, positions=positions),
                ref.expressive_metrics(*perf, **kw, positions=positions), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(perf=performances(), kw=window_kwargs(), positions=st.sampled_from([None, 4, 16]))
def test_every_registered_family_matches_its_twin(perf, kw, positions):
    """What the stage stores (all families, kernels.all_window_metrics) against the numpy twins, and
    equal to the two public halves (hits-only families + playing) bit for bit."""
    got = kernels.all_window_metrics(*perf, **kw, positions=positions)
    assert list(got) == list(kernels.METRICS)
    assert_same(got, ref.all_window_metrics(*perf, **kw, positions=positions), rtol=1e-5, atol=1e-5)
    halves = {**kernels.window_metrics(perf[0], **kw),
              **expressive_metrics(*perf, **{k: kw[k] for k in ("seq_len", "stride", "steps_per_bar",
                                                                   "beats_per_bar")}, positions=positions)}
    for name in got:
        np.testing.assert_array_equal(got[name], halves[name], err_msg=name)


def test_registry_twins_and_docs_name_every_metric():
    from pathlib import Path

    from kernels.families import FAMILIES, register
    from kernels.schema import Family, Metric

    assert set(ref.TWINS) == set(FAMILIES)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert [m for m in kernels.METRICS if f"{m}" not in docs] == []
    twin = Family("twin", "", (Metric("avg_hits", "float32"),), ("hits",), None, tuple)
    with pytest.raises(ValueError, match="'avg_hits' is declared by families 'rhythm' and 'twin'"):
        register(*FAMILIES.values(), twin)
    with pytest.raises(ValueError, match="neither ints nor one of"):
        Metric("x", "float32", ("steps",))


def test_hand_computed_swing_accent_and_timing():
    """A hi-hat on every 8th, accented on the beats, the off-beat 8ths half a step late; one soft
    snare a quarter step early on a 16th."""
    T = 32
    hits = np.zeros((T, 2), np.uint8)
    vel = np.zeros((T, 2), np.uint8)
    off = np.zeros((T, 2), np.int8)
    hits[0::2, 0] = 1
    vel[0::4, 0], vel[2::4, 0] = 110, 60
    off[2::4, 0] = 64                             # off-beat 8ths (position 2 of each 4-step beat)
    hits[5, 1], vel[5, 1], off[5, 1] = 1, 30, -32
    m = expressive_metrics(hits, vel, off, seq_len=32)
    h = 2.0                                       # half a beat of 4 steps
    assert m["swing_8"][0] == pytest.approx((h + 0.5) / (h - 0.5))
    # 16ths: on = 8th positions (mean x of 8 on-beat 0 and 8 off-beat 0.5 = 0.25); off = odd steps
    # (the one snare at -0.25): δ = -0.5, h = 1 -> (1 - 0.5) / (1 + 0.5)
    assert m["swing_16"][0] == pytest.approx(0.5 / 1.5)
    assert m["vel_mean"][0].tolist() == pytest.approx([85.0, 30.0])
    assert m["vel_std"][0].tolist() == pytest.approx([25.0, 0.0])
    assert m["offset_mean"][0].tolist() == pytest.approx([0.25, -0.25])
    accent = m["accent"][0]
    assert accent[[0, 4, 8, 12]].tolist() == [110.0] * 4 and accent[[2, 6, 10, 14]].tolist() == [60.0] * 4
    assert accent[5] == 30.0 and accent[1] == 0.0
    x = np.array([0.0] * 8 + [0.5] * 8 + [-0.25])
    assert m["timing_spread"][0] == pytest.approx(x.std())


def test_expressive_inputs_are_checked():
    with pytest.raises(ValueError, match="velocity must have the shape of hits"):
        expressive_metrics(np.ones((4, 2)), np.ones((4, 3), np.uint8), np.zeros((4, 2), np.int8), seq_len=4)
    with pytest.raises(ValueError, match="offset must be integers"):
        expressive_metrics(np.ones((4, 2)), np.ones((4, 2), np.uint8), np.zeros((4, 2)), seq_len=4)
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=6), seq_len=st.sampled_from([16, 32, 64]),
       data=st.data())
def test_scoring_windows_score_every_predictable_step_once(lengths, seq_len, data):
    """Steps 1 .. T-1 of every song, each exactly once, by a window that holds it as a target."""
    stride = data.draw(st.sampled_from([s for s in (4, 16, 32, 64) if s <= seq_len]))
    align = data.draw(st.sampled_from([1, 4, 16]))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    song, start, first = kernels.spec.scoring_windows(offsets, seq_len, stride, align)
    grid_song, grid_start = kernels.spec.corpus_windows(offsets, seq_len, stride)
    assert set(zip(grid_song.tolist(), grid_start.tolist())) <= set(zip(song.tolist(), start.tolist()))
    seen = {}
    for s, a, f in zip(song, start, first):
        assert a + 1 <= f and (a % stride == 0 or a % align == 0)
        for t in range(f, min(a + seq_len, lengths[s] - 1) + 1):
            seen[(s, t)] = seen.get((s, t), 0) + 1
    assert seen == {(s, t): 1 for s, n in enumerate(lengths) for t in range(1, n)}


def test_scoring_windows_reject_a_stride_that_leaves_gaps():
    with pytest.raises(ValueError, match="unscored"):
        kernels.spec.scoring_windows(np.array([0, 100]), 16, 32)
# --- structure metrics (kernels/structure.py) ---------------------------------------------------

@st.composite
def bar_songs(draw):
    """Songs built from a few distinct bars (silent ones included), so repeats, ties and
    silent-vs-silent pairs actually occur, unlike in random rolls."""
    spb, _ = draw(st.sampled_from(METERS))
    D = draw(st.sampled_from([1, 3, 9]))
    vocab = [np.zeros((spb, D), np.uint8)] + [
        draw(arrays(np.uint8, (spb, D), elements=st.sampled_from([0, 0, 1]))) for _ in range(2)]
    order = draw(st.lists(st.integers(0, 2), min_size=0, max_size=14))
    tail = draw(st.integers(0, spb - 1))
    roll = np.concatenate([vocab[i] for i in order] + [np.ones((tail, D), np.uint8)]) if order else \
        np.zeros((tail, D), np.uint8)
    return roll, spb


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(song=bar_songs(), bars=st.integers(1, 9), stride_bars=st.integers(1, 3), bpp=st.integers(1, 4))
def test_structure_metrics_match_reference_on_repeating_bars(song, bars, stride_bars, bpp):
    roll, spb = song
    kw = dict(seq_len=bars * spb, stride=stride_bars * spb, steps_per_bar=spb, beats_per_bar=1,
              bars_per_phrase=bpp)
    got, want = kernels.window_metrics(roll, **kw), ref.window_metrics(roll, **kw)
    for name in kernels.spec.STRUCTURE_SCHEMA:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_structure_of_hand_made_grooves():
    spb = 4
    a = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.uint8)        # kick, snare
    b = np.array([[1, 0], [0, 0], [0, 1], [1, 1]], np.uint8)        # + a pickup: sim(a, b) = 2/4
    silent = np.zeros((spb, 2), np.uint8)

    def m(*bars, bpp=4, start_bar=0):
        roll = np.concatenate([silent] * start_bar + list(bars))
        out = kernels.window_metrics(roll, seq_len=len(bars) * spb, stride=start_bar * spb or 1,
                                     steps_per_bar=spb, beats_per_bar=1, bars_per_phrase=bpp)
        return {k: float(out[k][-1]) for k in kernels.spec.STRUCTURE_SCHEMA}

    loop = m(*[a] * 8)                                                 # a one-bar loop
    assert loop["bar_sim_lag1"] == loop["bar_sim_lag4"] == loop["bar_repeat_rate"] == 1.0
    assert loop["fill_position"] == loop["fill_at_phrase_end"] == 0.0  # nothing changes: no fill
    quiet = m(*[silent] * 5)                                           # silent vs silent: the same bar
    assert quiet["bar_sim_lag1"] == quiet["bar_sim_lag4"] == quiet["bar_repeat_rate"] == 1.0
    assert m(a, silent)["bar_sim_lag1"] == 0.0 and m(a)["bar_sim_lag1"] == 0.0   # no pair: 0
    fills = m(a, a, a, b, a, a, a, b)                                  # a fill ends each phrase
    assert fills["bar_sim_lag1"] == pytest.approx((4 * 1 + 3 * 0.5) / 7)
    assert fills["bar_sim_lag4"] == 1.0 and fills["bar_repeat_rate"] == pytest.approx(4 / 7)
    # phrase 1: the fill (bar 3, last) and the bar after it (bar 4: its change is as large) tie
    assert fills["fill_at_phrase_end"] == pytest.approx((1 + 0.5) / 2)
    # song-aligned: a window starting at song bar 2 sees bars 2..9; its whole phrase is bars 4..7
    late = m(a, a, a, a, a, b, a, a, start_bar=2)
    assert late["fill_at_phrase_end"] == 1.0 and late["fill_position"] == 1.0
    tied = m(a, a, b, a, bpp=2)                        # phrase (0, 1): no change; (2, 3): a tie
    assert tied["fill_position"] == tied["fill_at_phrase_end"] == pytest.approx(0.5)


def _structure(roll, seq_len, stride, spb, bpp, direct):
    from kernels.schema import SongWindows
    from kernels.structure import METRICS, StructureOutputs, fill

    starts, L = kernels.window_grid(len(roll), seq_len, stride)
    song = SongWindows((roll > 0).astype(np.uint8), starts, L, stride, spb, 1, bpp, 4, 4, 1.0)
    out = StructureOutputs(*(np.zeros(len(starts), np.float32) for _ in METRICS))
    if len(starts):
        fill(song, out, direct=direct)
    return out


@settings(max_examples=int(os.environ.get("HIERDRUMS_KERNEL_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(song=bar_songs(), bars=st.integers(1, 9), extra=st.integers(0, 5), stride=st.integers(1, 20),
       bpp=st.integers(1, 5), noise=st.floats(0, 0.3), seed=st.integers(0, 2**16))
def test_structure_chains_equal_the_bar_by_bar_sums(song, bars, extra, stride, bpp, noise, seed):
    """The per-song chains (O(1) per window) give every window's float32 value bit for bit as the
    definition summed bar by bar, at any stride and phase, on repeating and on noisy bars."""
    roll, spb = song
    rng = np.random.default_rng(seed)
    roll = roll ^ (rng.random(roll.shape) < noise).astype(np.uint8)      # flipped cells: unequal bars
    fast = _structure(roll, bars * spb + extra, stride, spb, bpp, direct=False)
    slow = _structure(roll, bars * spb + extra, stride, spb, bpp, direct=True)
    for name, x, y in zip(fast._fields, fast, slow):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_structure_chains_on_a_long_random_song():
    """Thousands of windows per phase (stride 1, where each offset inside the bar has its own bars)."""
    rng = np.random.default_rng(11)
    roll = (rng.random((6000, 9)) < 0.15).astype(np.uint8)
    roll[2000:3008] = np.tile(roll[:16], (63, 1))         # a one-bar loop (repeats), then a two-bar one
    roll[3008:4000] = np.tile(roll[:32], (31, 1))
    for seq_len, bpp in ((128, 4), (256, 3), (512, 4)):
        fast, slow = (_structure(roll, seq_len, 1, 16, bpp, direct) for direct in (False, True))
        for name, x, y in zip(fast._fields, fast, slow):
            np.testing.assert_array_equal(x, y, err_msg=f"{name} seq_len {seq_len}")
        assert 0 < fast.bar_repeat_rate.max() and fast.fill_position.max() > 0
