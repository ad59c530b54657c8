"""Scores: NLL/BCE/F1 on known cases; overlapping area and KL of identical and disjoint sets."""
import math

import numpy as np

import pytest

from train.evaluate.scores import (ScoreAccumulator, SongScores, compare_sets, inter_set_distances, intra_set_distances,
                          kl_divergence, nll_bits_per_step, overlap_area)


def test_nll_and_bce_of_a_coin_are_one_bit_per_drum():
    rng = np.random.default_rng(0)
    steps = (rng.random((3, 20, 4)) < 0.5).astype(np.float32)
    acc = ScoreAccumulator(4)
    acc.update(np.full(steps.shape, 0.5), steps)
    res = acc.result(0.5)
    assert res["nll_bits_per_step"] == 4.0
    np.testing.assert_allclose(res["bce"], np.log(2.0))
    assert res["scored_steps"] == 3 * 19


def test_nll_matches_the_formula_and_ignores_masked_and_first_steps():
    rng = np.random.default_rng(1)
    steps = (rng.random((2, 10, 3)) < 0.4).astype(np.float32)
    probs = rng.uniform(0.05, 0.95, steps.shape)
    mask = np.ones((2, 10), bool)
    mask[1, 6:] = False
    p, y, m = probs[:, :-1], steps[:, 1:], mask[:, 1:]
    expected = -(y * np.log2(p) + (1 - y) * np.log2(1 - p)).sum(-1)[m].mean()
    np.testing.assert_allclose(nll_bits_per_step(probs, steps, mask), expected, rtol=1e-12)


def test_precision_recall_f1_per_drum_and_threshold_choice():
    # targets at steps 1..4 of one window, 2 drums; predictions for them sit in probs[:, 0..3]
    steps = np.zeros((1, 5, 2), np.float32)
    steps[0, 1:, 0] = [1, 1, 0, 0]
    steps[0, 1:, 1] = [1, 0, 1, 0]
    probs = np.zeros((1, 5, 2))
    probs[0, :4, 0] = [0.9, 0.4, 0.3, 0.1]
    probs[0, :4, 1] = [0.8, 0.7, 0.2, 0.6]
    acc = ScoreAccumulator(2)
    acc.update(probs, steps)
    res = acc.result(0.5, ["kick", "snare"])
    # tau = 0.5: kick predicts {1}: TP1 FP0 FN1; snare predicts {1,2,4}: TP1 FP2 FN1
    assert res["per_drum"]["kick"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert res["per_drum"]["snare"]["precision"] == 1 / 3
    assert res["per_drum"]["snare"]["recall"] == 0.5
    np.testing.assert_allclose(res["precision"], 2 / 4)
    np.testing.assert_allclose(res["recall"], 2 / 4)
    # best overall F1: tau in (0.1, 0.2] predicts kick {1,2,3}, snare {1,2,3,4} -> 4 TP, 3 FP, 0 FN
    # (F1 8/11; every other range is lower, e.g. (0.2, 0.3]: 3 TP, 3 FP, 1 FN -> 0.6)
    tau = acc.best_threshold()
    assert 0.1 < tau <= 0.2
    np.testing.assert_allclose(acc.result(tau)["f1"], 2 * 4 / (2 * 4 + 3 + 0))
    np.testing.assert_allclose(acc.result(0.25)["f1"], 2 * 3 / (2 * 3 + 3 + 1))


def test_overlap_area_identical_is_one_disjoint_is_zero():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 300)
    np.testing.assert_allclose(overlap_area(a, a.copy()), 1.0, atol=1e-9)
    assert overlap_area(a, a + 1000.0) < 1e-6
    # N(0,1) against N(1,1): OA = 2 Phi(-1/2) = 0.617, each KDE widened by its bandwidth h
    # (Scott's rule: variance 1 + h^2); 0.02 catches a factor of two and a lost normalisation
    big = rng.normal(0, 1, 4000)
    h = 1.06 * 4000 ** -0.2
    assert overlap_area(big, big + 1.0) == pytest.approx(1 + math.erf(-0.5 / math.sqrt(2 * (1 + h * h))), abs=0.02)
    assert overlap_area(big, big + 2.0) == pytest.approx(1 + math.erf(-1.0 / math.sqrt(2 * (1 + h * h))), abs=0.02)
    # degenerate sets with no spread: equal -> 1, different -> 0
    np.testing.assert_allclose(overlap_area(np.ones(10), np.ones(5)), 1.0, atol=1e-9)
    assert overlap_area(np.zeros(10), np.ones(10)) < 1e-6


def test_kl_of_identical_is_zero_and_grows_with_distance():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 300)
    assert kl_divergence(a, a.copy()) == 0.0
    near, far = kl_divergence(a, a + 0.5), kl_divergence(a, a + 3.0)
    assert 0 < near < far


def test_set_distances():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(sorted(intra_set_distances(x)), [1.0, np.sqrt(18), 5.0])
    np.testing.assert_allclose(inter_set_distances(x[:1], x[1:]), [5.0, 1.0])


def test_compare_sets_prefers_a_generator_that_matches_the_data():
    rng = np.random.default_rng(4)
    real = {"density": rng.normal(0.3, 0.05, 200), "pattern": rng.normal(0, 1, (200, 3))}
    good = {"density": rng.normal(0.3, 0.05, 200), "pattern": rng.normal(0, 1, (200, 3))}
    bad = {"density": rng.normal(0.8, 0.05, 200), "pattern": rng.normal(3, 1, (200, 3))}
    g, b = compare_sets(real, good), compare_sets(real, bad)
    for name in real:
        assert g[name]["overlap_area"] > 0.8 > b[name]["overlap_area"]
        assert g[name]["kl_divergence"] < b[name]["kl_divergence"]
    np.testing.assert_allclose(g["density"]["real_mean"], real["density"].mean())


def test_song_scores_pool_to_the_total_and_bootstrap_over_songs():
    rng = np.random.default_rng(4)
    probs = rng.uniform(0.05, 0.95, (6, 10, 3))
    targets = (rng.random((6, 10, 3)) < probs).astype(np.uint8)
    scored = rng.random((6, 10)) < 0.8
    song = np.array([0, 0, 1, 2, 2, 2])
    per = SongScores(3)
    per.update(probs[:3], targets[:3], scored[:3], song[:3])        # batches may split a song
    per.update(probs[3:], targets[3:], scored[3:], song[3:])
    whole = ScoreAccumulator(3)
    whole.update_targets(probs, targets, scored)
    assert per.total().steps == whole.steps == scored.sum()
    np.testing.assert_allclose(per.total().nll_bits, whole.nll_bits)
    one = per.total([1])
    assert one.steps == scored[2].sum()
    ci = per.bootstrap(0.5, samples=500, seed=1)
    point = whole.result(0.5)
    assert ci["nll_bits_per_step"][0] <= point["nll_bits_per_step"] <= ci["nll_bits_per_step"][1]
    assert ci["f1"][0] <= point["f1"] <= ci["f1"][1]
    # songs that all score alike: every resample gives the same value, the interval has no width
    same = SongScores(3)
    for s in range(4):
        same.update(probs[:1], targets[:1], scored[:1], np.array([s]))
    lo, hi = same.bootstrap(0.5, samples=200)["nll_bits_per_step"]
    assert lo == pytest.approx(hi)


def test_kl_is_a_divergence_on_one_grid_for_both_densities():
    """KL(N(0,1) || N(1,1)) = 0.5 nats and KL(N(0,1) || N(0,2^2)) = ln 2 + 1/8 - 1/2: both KDEs on one
    grid give the analytic values (a KDE per own grid, as mgeval does, does not)."""
    rng = np.random.default_rng(7)
    a, b, c = rng.normal(0, 1, 4000), rng.normal(1, 1, 4000), rng.normal(0, 2, 4000)
    assert kl_divergence(a, b) == pytest.approx(0.5, abs=0.08)
    assert kl_divergence(a, c) == pytest.approx(np.log(2) + 1 / 8 - 1 / 2, abs=0.06)


def test_zero_variance_metrics_are_finite_and_flagged():
    real = {"const": np.zeros((20, 1)), "spread": np.arange(20.0)[:, None], "both": np.ones((20, 3))}
    gen = {"const": np.arange(10.0)[:, None], "spread": np.full((10, 1), 4.0), "both": np.ones((10, 3))}
    out = compare_sets(real, gen)
    assert [out[k]["zero_variance"] for k in ("const", "spread", "both")] == ["real", "generated", "both"]
    for c in out.values():
        assert np.isfinite(c["overlap_area"]) and np.isfinite(c["kl_divergence"])
    assert out["both"]["overlap_area"] == pytest.approx(1.0) and out["both"]["kl_divergence"] == pytest.approx(0.0)


def test_compare_sets_bootstraps_over_songs():
    rng = np.random.default_rng(8)
    real = {"m": rng.normal(0, 1, (60, 2))}
    groups = np.repeat(np.arange(20), 3)              # 20 songs of 3 windows
    near = compare_sets(real, {"m": rng.normal(0, 1, (40, 2))}, groups=groups, samples=40)["m"]
    far = compare_sets(real, {"m": rng.normal(3, 1, (40, 2))}, groups=groups, samples=40)["m"]
    for c in (near, far):
        lo, hi = c["ci95"]["overlap_area"]
        assert lo < hi and lo - 0.05 <= c["overlap_area"] <= hi + 0.05
    assert far["ci95"]["overlap_area"][1] < near["ci95"]["overlap_area"][0]
    assert "ci95" not in compare_sets(real, {"m": real["m"]})["m"]     # no groups: no intervals
