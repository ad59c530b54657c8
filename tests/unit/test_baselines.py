"""Baselines on hand-made cases whose right answer is known."""
import numpy as np
import pytest

from train.evaluate.baselines import (FrequencyBaseline, NGramBaseline, PositionBaseline, RepeatBarBaseline,
                                    make_baselines, select_ngram)
from train.evaluate.scores import ScoreAccumulator, nll_bits_per_step

SPB = 16


def _one_bar_pattern(num_drums=3):
    bar = np.zeros((SPB, num_drums), np.uint8)
    bar[0::4, 0] = 1          # kick on the beats
    bar[4::8, 1] = 1          # snare on 2 and 4
    bar[0::2, 2] = 1          # hats on eighths
    return bar


def test_repeat_bar_scores_near_zero_on_a_strictly_repeating_bar():
    song = np.tile(_one_bar_pattern(), (32, 1))          # 32 bars, 512 steps
    rb = RepeatBarBaseline(SPB).fit([song])
    window = song[None, :256].astype(np.float32)
    probs = rb.predict(window)
    # After the first bar every step is predicted at (1 - eps): about D * 1.44e-4 bits.
    after_first_bar = nll_bits_per_step(probs[:, SPB - 1:], window[:, SPB - 1:])
    assert after_first_bar < 1e-3
    # The first bar falls back to frequencies, so the whole window is small but not zero.
    assert nll_bits_per_step(probs, window) < 0.25
    # Other baselines are far from zero on the same window.
    freq = FrequencyBaseline().fit([song])
    assert nll_bits_per_step(freq.predict(window), window) > 1.0


def test_repeat_bar_predicts_step_t_plus_1_from_step_t_plus_1_minus_spb():
    rng = np.random.default_rng(1)
    x = (rng.random((2, 40, 4)) < 0.3).astype(np.float32)
    rb = RepeatBarBaseline(SPB, eps=0.01, calibrated=False).fit([x[0]])
    probs = rb.predict(x)
    t = np.arange(SPB - 1, 40)
    expected = np.where(x[:, t + 1 - SPB] > 0, 0.99, 0.01)
    np.testing.assert_allclose(probs[:, t], expected)
    # Before a whole bar is in the window: the per-drum frequency of the training song.
    np.testing.assert_allclose(probs[:, : SPB - 1], np.broadcast_to(np.clip(x[0].mean(0), .01, .99),
                                                                     (2, SPB - 1, 4)))


def test_calibrated_repeat_bar_learns_how_often_a_copy_is_right():
    # drum 0: hit at step 0 of every bar, and at step 8 of every other bar
    song = np.zeros((8 * SPB, 2), np.uint8)
    song[::SPB, 0] = 1
    song[8::2 * SPB, 0] = 1
    song[::4, 1] = 1                     # drum 1 strictly repeats
    rb = RepeatBarBaseline(SPB, eps=1e-9).fit([song])
    before, now = song[:-SPB, 0], song[SPB:, 0]
    np.testing.assert_allclose(rb.p_repeat, [(before & now).sum() / before.sum(), 1.0])
    np.testing.assert_allclose(rb.p_new, [((1 - before) & now).sum() / (1 - before).sum(), 0.0])
    assert 0 < rb.p_repeat[0] < 1 and 0 < rb.p_new[0] < 1
    probs = rb.predict(song[None].astype(np.float32))
    np.testing.assert_allclose(probs[0, SPB - 1:, 0], np.where(song[: -SPB + 1, 0] > 0, rb.p_repeat[0], rb.p_new[0]))


def test_repeat_bar_repeats_each_songs_own_bar():
    # a 3/4 song (12 steps a bar) beside a 4/4 one: each window copies its own meter's bar
    waltz = np.tile(_one_bar_pattern()[:12], (8, 1))
    four = np.tile(_one_bar_pattern(), (6, 1))
    rb = RepeatBarBaseline(SPB).fit([waltz, four], steps_per_bar=[12, 16])
    np.testing.assert_allclose(rb.p_repeat[:2], 1.0)
    np.testing.assert_allclose(rb.p_new, 0.0)
    windows = np.stack([waltz[:64], four[:64]]).astype(np.float32)
    probs = rb.predict(windows, steps_per_bar=np.array([12, 16]))
    assert nll_bits_per_step(probs[:1, 11:], windows[:1, 11:]) < 1e-3
    assert nll_bits_per_step(probs[1:, 15:], windows[1:, 15:]) < 1e-3
    # the 4/4 grid on the waltz copies the wrong step
    assert nll_bits_per_step(rb.predict(windows[:1])[:, 15:], windows[:1, 15:]) > 1.0


def test_frequency_equals_empirical_rate():
    rng = np.random.default_rng(0)
    songs = [(rng.random((n, 5)) < p).astype(np.uint8) for n, p in [(100, 0.1), (37, 0.6), (5, 0.9)]]
    freq = FrequencyBaseline(eps=1e-9).fit(songs)
    allsteps = np.concatenate(songs)
    np.testing.assert_allclose(freq.rates, allsteps.sum(0) / len(allsteps))
    probs = freq.predict(np.zeros((3, 7, 5)))
    np.testing.assert_allclose(probs, np.broadcast_to(allsteps.mean(0), (3, 7, 5)))


def test_ngram_backoff_hand_case():
    # Two drums; patterns: 0 = rest, 1 = drum0, 2 = drum1. Training song: 1 2 1 2 1 0
    song = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 0]], np.uint8)
    ng = NGramBaseline(n=2, alpha=0.0, eps=1e-9).fit([song])
    # unigram over all 6 steps: drum0 3/6, drum1 2/6
    # bigram: after 1 -> {2, 2, 0}: drum0 0/3, drum1 2/3; after 2 -> {1, 1}: drum0 2/2, drum1 0/2
    window = np.array([[[1, 0], [0, 1], [0, 0], [1, 1]]], np.float32)
    probs = ng.predict(window)
    np.testing.assert_allclose(probs[0, 0], [0, 2 / 3], atol=1e-8)     # context "1"
    np.testing.assert_allclose(probs[0, 1], [1, 0], atol=1e-8)         # context "2"
    # context "0" was never followed by anything in training -> back off to the unigram
    np.testing.assert_allclose(probs[0, 2], [3 / 6, 2 / 6], atol=1e-8)
    # context "3" (both drums) never seen -> unigram
    np.testing.assert_allclose(probs[0, 3], [3 / 6, 2 / 6], atol=1e-8)

    # With alpha = 1 the seen context is interpolated with its back-off: (hits + p_lower) / (n + 1)
    ng1 = NGramBaseline(n=2, alpha=1.0, eps=1e-9).fit([song])
    p1 = ng1.predict(window)
    np.testing.assert_allclose(p1[0, 0], [(0 + 3 / 6) / 4, (2 + 2 / 6) / 4], atol=1e-8)
    np.testing.assert_allclose(p1[0, 2], [3 / 6, 2 / 6], atol=1e-8)


def test_select_ngram_finds_the_context_length_the_data_needs():
    # patterns A A B repeating: after A comes A or B (a bigram cannot tell), two patterns decide it
    a, b = [1, 0], [0, 1]
    song = np.array([a, a, b] * 20, np.uint8)
    window = song[None, :30].astype(np.float32)

    def nll(model):
        return nll_bits_per_step(model.predict(window), window)

    chosen, grid = select_ngram([song], nll, ns=[2, 3, 4], alphas=[0.0, 1.0], eps=1e-6)
    assert (chosen.n, chosen.alpha) == (3, 0.0)              # n = 4 is no better: the shorter one wins
    assert len(grid) == 6 and min(grid, key=lambda g: g["nll_bits_per_step"])["n"] == 3
    # only the first step of the window has a one-pattern context: ~2 bits over 29 steps
    assert nll(chosen) < 0.1 and nll(NGramBaseline(2, 0.0, 1e-6).fit([song])) > 0.5
    # n too long for a 64-bit key is skipped, not an error
    _, grid = select_ngram([song], nll, ns=[2, 40], alphas=[1.0])
    assert [g["n"] for g in grid] == [2]


def test_ngram_uses_only_the_window_for_context():
    song = np.tile(_one_bar_pattern(), (8, 1))
    ng = NGramBaseline(n=4, alpha=0.0, eps=1e-9).fit([song])
    window = song[None, :64].astype(np.float32)
    probs = ng.predict(window)
    # The first prediction has one pattern of context: the bigram estimate, not a longer one.
    bigram = NGramBaseline(n=2, alpha=0.0, eps=1e-9).fit([song]).predict(window)
    np.testing.assert_allclose(probs[0, 0], bigram[0, 0])
    # Changing a step never changes predictions made before it.
    changed = window.copy()
    changed[0, 40] = 1 - changed[0, 40]
    np.testing.assert_array_equal(ng.predict(changed)[0, :40], probs[0, :40])


def test_every_baseline_is_finite_and_floored():
    rng = np.random.default_rng(3)
    train = [(rng.random((200, 9)) < 0.2).astype(np.uint8)]
    window = (rng.random((4, 64, 9)) < 0.5).astype(np.float32)
    mask = np.ones((4, 64), bool)
    mask[1, 30:] = False
    for b in make_baselines(SPB, ngram_n=4, eps=1e-4):
        probs = b.fit(train).predict(window, mask)
        assert probs.shape == window.shape
        assert probs.min() >= 1e-4 and probs.max() <= 1 - 1e-4
        acc = ScoreAccumulator(9)
        acc.update(probs, window, mask)
        assert np.isfinite(acc.nll_bits) and acc.steps == 4 * 63 - 34


def test_ngram_rejects_contexts_too_wide_for_a_key():
    with pytest.raises(ValueError, match="64-bit"):
        NGramBaseline(n=8).fit([np.zeros((10, 16), np.uint8)])


def _position_by_counting(songs, spb, lags, phase, lagged):
    """(hits + 1) / (count + 2) of drum 0 over the training steps at `phase` whose drum 0 was
    `lagged[i]` lags[i] bars earlier: the add-one estimate, counted by hand."""
    hits = count = 0
    for x in songs:
        for t in range(max(lags, default=0) * spb, len(x)):
            if t % spb == phase and all(x[t - k * spb, 0] == v for k, v in zip(lags, lagged)):
                count += 1
                hits += int(x[t, 0])
    return (hits + 1) / (count + 2)


def test_position_baselines_are_add_one_counts_of_phase_and_lags():
    rng = np.random.default_rng(5)
    spb = 4
    train = [(rng.random((60, 2)) < 0.4).astype(np.uint8) for _ in range(3)]
    window = (rng.random((1, 16, 2)) < 0.4).astype(np.uint8)
    start = np.array([6])                          # the window starts at phase 2 of a bar
    pos = PositionBaseline(spb).fit(train)
    lag = PositionBaseline(spb, (2, 1)).fit(train)
    assert (pos.name, lag.name) == ("position", "position_lag12")
    p_pos, p_lag = pos.predict(window, start=start)[0, :, 0], lag.predict(window, start=start)[0, :, 0]
    for t in range(16):                            # position t predicts window step t+1
        phase = (6 + t + 1) % spb
        assert p_pos[t] == pytest.approx(_position_by_counting(train, spb, (), phase, ()))
        # lags that reach before the window are unknown: the deepest table that fits is used
        lags = tuple(k for k in (1, 2) if t + 1 - k * spb >= 0)
        lagged = tuple(int(window[0, t + 1 - k * spb, 0]) for k in lags)
        assert p_lag[t] == pytest.approx(_position_by_counting(train, spb, lags, phase, lagged))


def test_position_baseline_learns_a_backbeat_the_frequency_baseline_cannot():
    song = np.tile(_one_bar_pattern(), (32, 1))
    window = song[None, :64]
    freq = FrequencyBaseline().fit([song]).predict(window)
    pos = PositionBaseline(SPB).fit([song]).predict(window, start=np.array([0]))
    lag = PositionBaseline(SPB, (1, 2)).fit([song]).predict(window, start=np.array([0]))
    f, p, q = (nll_bits_per_step(x, window) for x in (freq, pos, lag))
    # the phase alone explains a strict one-bar groove (add-one smoothing of 32 bars: ~0.04 bits a drum)
    assert max(p, q) < 0.2 < 2.0 < f
