"""The judge's checks catch what they are for, and stay quiet where there is nothing to catch:
a planted copy, a density shift, a bar shuffle, a shift of a metric's values; two samples of one
distribution are not told apart; the style classifier tells apart styles that differ by construction."""
import math

import numpy as np
import pytest

from train.evaluate import novelty as nov
from train.evaluate import two_sample as ts
from train.evaluate.scores import compare_sets, constant_in_real, mean_oa_with_interval, value_shift

SPB, D = 16, 9


def _random_songs(rng, n, lo=100, hi=400, p=0.15):
    return [(rng.random((int(rng.integers(lo, hi)), D)) < p).astype(np.uint8) for _ in range(n)]


def test_novelty_finds_a_planted_copy_at_any_offset_and_nothing_else():
    rng = np.random.default_rng(0)
    train = _random_songs(rng, 30)
    index = nov.TrainIndex(train, SPB)
    gen = [(rng.random((256, D)) < 0.15).astype(np.uint8) for _ in range(20)]
    clean = nov.novelty(gen, index)
    assert (clean["found_1bar"], clean["found_2bar"], clean["found_4bar"], clean["longest_run_max"]) == (0, 0, 0, 0)
    # 5 bars of train song 3 from step 7 (off its bar lines) into window 0 from its bar 2
    gen[0][32:32 + 5 * SPB] = train[3][7:7 + 5 * SPB]
    planted = nov.novelty(gen, index)
    assert planted["found_1bar"] == pytest.approx(5 / 320)            # 20 windows x 16 bars
    assert planted["found_2bar"] == pytest.approx(4 / 300)            # 15 two-bar starts per window
    assert planted["found_4bar"] == pytest.approx(2 / 260)
    assert planted["longest_run_max"] == 5 and planted["longest_run_mean"] == pytest.approx(5 / 20)
    assert planted["duplicates"] == 0.0
    # the same training bars in reverse order: each bar is a copy, no pair of them is
    rev = [w.copy() for w in gen]
    bars = train[5][:4 * SPB].reshape(4, SPB, D)[::-1].reshape(-1, D)
    rev[1][:4 * SPB] = bars
    swapped = nov.novelty(rev, index)
    assert swapped["found_1bar"] - planted["found_1bar"] == pytest.approx(4 / 320)
    assert swapped["found_2bar"] == planted["found_2bar"] and swapped["longest_run_max"] == 5


def test_novelty_of_copied_windows_is_total_and_duplicates_are_counted():
    rng = np.random.default_rng(1)
    train = _random_songs(rng, 12, lo=260, hi=300)
    index = nov.TrainIndex(train, SPB)
    copies = [s[16:16 + 128] for s in train[:4]] + [train[0][16:16 + 128]]
    r = nov.novelty(copies, index)
    assert r["found_1bar"] == r["found_2bar"] == r["found_4bar"] == 1.0
    assert r["longest_run_max"] == 8 and r["jaccard_4bar_mean"] == pytest.approx(1.0)
    assert r["duplicates"] == pytest.approx(2 / 5)
    # silent bars are no copies: a window of silence counts no segment at all
    silent = nov.novelty([np.zeros((128, D), np.uint8)], index)
    assert silent["segments_1bar"] == 0 and silent["longest_run_max"] == 0


def test_nearest_jaccard_is_the_best_match_over_bar_aligned_training_segments():
    rng = np.random.default_rng(2)
    train = _random_songs(rng, 5, lo=256, hi=257)
    index = nov.TrainIndex(train, SPB)
    seg = train[2][64:128].copy()
    flip = np.argwhere(seg > 0)[:10]              # 10 of its hits removed: J = (n - 10) / n
    n = int(seg.sum())
    seg[flip[:, 0], flip[:, 1]] = 0
    j = nov.nearest_jaccard([seg], index)
    assert j.tolist() == [pytest.approx((n - 10) / n)]


def _structured(rng, n, p, first_group, nb=8):
    """Windows of a groove with a fill every 4th bar, two windows per song."""
    rolls, groups = [], []
    for i in range(n):
        base, fill = rng.random((SPB, D)) < p, rng.random((SPB, D)) < 1.5 * p
        bars = [fill if b % 4 == 3 else base ^ (rng.random((SPB, D)) < 0.02) for b in range(nb)]
        rolls.append(np.concatenate(bars).astype(np.uint8))
        groups.append(first_group + i // 2)
    played = [(r * rng.integers(40, 120, r.shape), r * rng.integers(-20, 20, r.shape)) for r in rolls]
    return ts.stack_windows(rolls, played, np.array(groups), nb * SPB)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return {"a": _structured(rng, 80, 0.15, 0), "b": _structured(rng, 80, 0.15, 1000),
            "dense": _structured(rng, 80, 0.25, 2000)}


KW = dict(folds=4, steps=100, samples=300)


def test_two_sample_test_does_not_fire_on_two_samples_of_one_distribution(samples):
    r = ts.two_sample_test(samples["a"], samples["b"], SPB, **KW)
    for judge in ("texture", "form"):     # 160 held-out windows: one SE of chance is 0.04
        lo, hi = r[judge]["ci95"]
        assert abs(r[judge]["accuracy"] - 0.5) < 0.1 and lo < 0.55 and hi > 0.5, (judge, r[judge])


def test_two_sample_test_catches_a_density_shift_and_a_bar_shuffle(samples):
    dense = ts.two_sample_test(samples["a"], samples["dense"], SPB, **KW)
    assert dense["texture"]["accuracy"] > 0.8 and dense["texture"]["ci95"][0] > 0.6
    shuffled = ts.two_sample_test(samples["a"], ts.shuffle_bars(samples["b"], SPB), SPB, **KW)
    assert shuffled["form"]["accuracy"] > 0.85 and shuffled["form"]["ci95"][0] > 0.6


def test_folds_never_split_a_song():
    groups = np.repeat(np.arange(20), 3)
    fold = ts.fold_of_groups(groups, 5, seed=0)
    assert all(len(set(fold[groups == g])) == 1 for g in range(20)) and set(fold) == set(range(5))


def test_bar_self_similarity_and_the_power_rows():
    hits = np.zeros((1, 3 * SPB, D), np.float32)
    hits[0, 0, 0] = hits[0, SPB, 0] = 1                    # bars 0 and 1 equal, bar 2 silent
    assert ts.bar_self_similarity(hits, SPB).tolist() == [[1.0, 0.0, 0.0]]
    s = ts.stack_windows([np.eye(4 * SPB, D, dtype=np.uint8)], None, np.array([0]), 4 * SPB)
    shuffled = ts.shuffle_bars(s, SPB, seed=3)
    assert shuffled.hits.sum() == s.hits.sum() and not np.array_equal(shuffled.hits, s.hits)
    assert sorted(map(tuple, shuffled.hits[0].reshape(4, -1))) == sorted(map(tuple, s.hits[0].reshape(4, -1)))
    many = ts.stack_windows([(np.random.default_rng(0).random((64, D)) < 0.5).astype(np.uint8)] * 50, None,
                            np.arange(50), 64)
    assert ts.drop_hits(many, 0.2).hits.sum() / many.hits.sum() == pytest.approx(0.8, abs=0.02)


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_value_shift_sees_a_shift_the_relative_oa_hides():
    """The values' overlap of N(0,s^2) and N(d s,s^2) is 2 Phi(-d/2) (widened by the KDE's bandwidth);
    the shift is d real SDs. A set squeezed onto the real mean keeps a fair relative OA but not these."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 2, (4000, 1)), rng.normal(1, 2, (4000, 1))     # d = 1/2 in units of the SD 2
    h = 1.06 * 4000 ** -0.2                             # Scott's rule on unit spread
    r = value_shift(x, y)
    assert r["value_overlap"] == pytest.approx(2 * _phi(-0.25 / math.sqrt(1 + h * h)), abs=0.015)
    assert r["mean_shift_sd"] == pytest.approx(0.5, abs=0.05)
    squeezed = {"m": rng.normal(0, 0.1, (300, 1))}
    rel = compare_sets({"m": x[:300]}, squeezed)["m"]["overlap_area"]
    assert value_shift(x[:300], squeezed["m"])["value_overlap"] < 0.3 < rel


def test_headline_mean_leaves_out_constant_metrics_and_a_copy_scores_near_one():
    rng = np.random.default_rng(5)
    real = {"a": rng.normal(0, 1, (120, 1)), "b": rng.normal(0, 1, (120, 2)), "c": np.ones((120, 1))}
    songs = np.repeat(np.arange(40), 3)
    assert constant_in_real(real) == ["c"]
    copy = mean_oa_with_interval(real, real, songs, samples=500, exclude=["c"])
    assert copy["metrics"] == ["a", "b"] and copy["resamples"] == 500
    assert copy["mean_oa"] > 0.95            # < 1: the set against itself also counts its n zero self-distances
    far = {k: v + 3.0 for k, v in real.items()}
    shifted = mean_oa_with_interval(real, far, songs, samples=500, exclude=["c"])
    assert shifted["ci95"][1] < copy["ci95"][0] and shifted["mean_oa"] < 0.3


def test_style_classifier_tells_apart_styles_that_differ_by_construction():
    """Built-in rock and bossa songs share no groove template: windows of held-out songs are named
    right; with the labels shuffled in training the same classifier is at chance."""
    from pipeline.corpus import generate_song
    from train.evaluate.style_classifier import LogisticRegression, features

    def windows(ids):
        x, y = [], []
        for i in ids:
            song = generate_song(i, seed=0, styles=("rock", "bossa"))
            rolls = [song.hits[a:a + 64] for a in range(0, len(song.hits) - 64 + 1, 64)]
            x.append(features(np.stack(rolls), np.full(len(rolls), 64), SPB))
            y += [i % 2] * len(rolls)
        return np.concatenate(x), np.array(y)

    x, y = windows(range(8))
    xv, yv = windows(range(8, 12))
    assert (LogisticRegression().fit(x, y, 2).predict(xv) == yv).mean() > 0.95
    wrong = np.random.default_rng(0).permutation(y)
    assert (LogisticRegression().fit(x, wrong, 2).predict(xv) == yv).mean() < 0.8


def test_running_residual_is_causal_per_drum_then_over_every_drum():
    from train.evaluate.expressive_baselines import causal_running_mean

    hit = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], bool)
    res = np.array([[2.0, 0], [0, 10.0], [4.0, 20.0], [0, 0], [9.0, 0]])
    got = causal_running_mean(res, hit)
    # step 0: nothing earlier -> 0; drum 1 at step 1: no earlier drum-1 hit -> every drum's (2.0)
    expected = np.array([[0, 0], [2.0, 2.0], [2.0, 10.0], [3.0, 15.0], [3.0, 15.0]])
    np.testing.assert_allclose(got, expected)
