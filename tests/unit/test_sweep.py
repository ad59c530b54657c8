"""python -m train.evaluate.sweep: decoding settings ranked by generated-vs-real fit."""

import json

import pytest

from train.evaluate.sweep import within

def test_best_point_must_meet_the_structure_bars_before_mean_oa():
    """A point inside the n-gram and lag-1 bars wins over a higher mean OA outside them; with no
    point inside, the highest mean OA wins; a missing bar constrains nothing."""
    from train.evaluate.sweep import _rank
    bars = {"ngram_unique_ratio": 0.2, "lag1_similarity_diff": 0.05}
    busy = {"mean_oa": 0.91, "ngram_unique_ratio": 1.44, "lag1_similarity_diff": -0.05}
    stuck = {"mean_oa": 0.90, "ngram_unique_ratio": 1.05, "lag1_similarity_diff": 0.063}
    fits = {"mean_oa": 0.88, "ngram_unique_ratio": 0.81, "lag1_similarity_diff": -0.049}
    assert [within(r, bars) for r in (busy, stuck, fits)] == [False, False, True]
    assert max((busy, stuck, fits), key=lambda r: _rank(r, bars)) is fits
    assert max((busy, stuck), key=lambda r: _rank(r, bars)) is busy
    assert within(stuck, {"ngram_unique_ratio": 0.2}) and within(busy, None)

def test_seeds_sweeps_are_averaged_point_by_point_and_best_chosen_inside_the_bars():
    from train.evaluate.sweep_seeds import combine

    def row(t, oa, nu, lag):
        return {"temperature": t, "top_k": None, "top_p": None, "oa": {"a": oa, "b": 1.0},
                "mean_oa": (oa + 1.0) / 2, "ngram_unique_ratio": nu, "lag1_similarity_diff": lag}
    seeds = [{"rows": [row(0.8, 0.9, 0.7, 0.10), row(1.0, 0.6, 1.1, 0.0)]},
             {"rows": [row(0.8, 0.7, 0.9, 0.02), row(1.0, 0.8, 1.2, -0.02)]}]
    rows = combine(seeds)
    assert [r["temperature"] for r in rows] == [0.8, 1.0]
    assert rows[0]["oa"]["a"] == pytest.approx(0.8) and rows[0]["ngram_unique_ratio"] == pytest.approx(0.8)
    assert rows[1]["lag1_similarity_diff"] == pytest.approx(-0.01) and rows[1]["worst_metric"] == "a"
    assert within(rows[0], {"ngram_unique_ratio": 0.2, "lag1_similarity_diff": 0.05}) is False   # lag +0.06
    assert within(rows[1], {"ngram_unique_ratio": 0.2, "lag1_similarity_diff": 0.05}) is True

def test_seeds_sweeps_of_the_reported_split_are_refused_unless_a_final_report(tmp_path, capsys):
    from train.evaluate.sweep_seeds import main

    rows = [{"temperature": 1.0, "top_k": None, "top_p": None, "oa": {"a": 0.9}, "mean_oa": 0.9,
             "ngram_unique_ratio": 1.0, "lag1_similarity_diff": 0.0}]
    for split in ("validation", "tune"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "decoding_sweep.json").write_text(json.dumps({"split": split, "rows": rows}))
    assert main([str(tmp_path / "validation")]) == 2 and "--final-report" in capsys.readouterr().err
    assert main([str(tmp_path / "validation"), "--final-report"]) == 0
    assert main([str(tmp_path / "tune")]) == 0
