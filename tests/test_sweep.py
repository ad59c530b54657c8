"""python -m train.evaluate.sweep: decoding settings ranked by generated-vs-real fit."""
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from common.config import REPO_ROOT, ConfigError, compose
from pipeline.store import Store
from tests.tiny_checkpoint import OVERRIDES, make_checkpoint, make_ready
from train.evaluate.generated import generated_vs_real
from train.evaluate.sweep import sweep, within
from train.evaluate.windows import split_windows
from train.training.checkpoint import load_for_inference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_ready(tmp_path_factory.mktemp("sweep"))
    return d, make_checkpoint(d / "run" / "last.pt", d / "store.zarr", train_steps=15, output="joint")


def test_sweep_scores_every_point_as_evaluate_would(tiny, tmp_path):
    data, ckpt = tiny
    cfg = compose(OVERRIDES + [f"paths.data_dir={data}", f"checkpoint={ckpt}", f"evaluate.out_dir={tmp_path}",
                               "evaluate.decoding_sweep.temperature=[0.5,1.0]",
                               "evaluate.decoding_sweep.top_p=[null,0.9]", "evaluate.generated.max_samples=4"],
                  config_name="evaluate")
    with pytest.raises(ConfigError, match="split=validation is the reported split"):
        sweep(cfg)            # the tiny data has no tune split: validation only as a final report
    res = sweep(OmegaConf.merge(cfg, {"evaluate": {"decoding_sweep": {"final_report": True}}}))
    rows = res["rows"]
    assert [(r["temperature"], r["top_p"]) for r in rows] == [(0.5, None), (0.5, 0.9), (1.0, None), (1.0, 0.9)]
    bars = cfg.evaluate.decoding_sweep.within
    best = max(rows, key=lambda r: (within(r, bars), r["mean_oa"]))
    assert res["best"] == {k: best[k] for k in ("temperature", "top_k", "top_p", "expressive_temperature")}
    # a row is exactly what evaluate's generated-vs-real gives at that setting
    model, _, _ = load_for_inference(ckpt)
    windows = split_windows(data / "ready", "validation", 64, 64, 16, 2)
    point = compose(OVERRIDES + ["evaluate.generated.temperature=1.0", "evaluate.generated.top_p=0.9",
                                 "evaluate.generated.max_samples=4", "evaluate.generated.bootstrap_samples=0"],
                    config_name="evaluate")
    comparison = generated_vs_real(point, model, windows, 9, Store(data / "store.zarr"))[0]
    assert rows[3]["oa"] == {k: v["overlap_area"] for k, v in comparison.items()}
    assert "bar_sim_lag1" in rows[3]["oa"] and rows[3]["lag1_similarity_diff"] is not None
    saved = json.loads((tmp_path / "decoding_sweep.json").read_text())
    assert saved["best"] == res["best"] and (tmp_path / "decoding_sweep.png").is_file()
    assert (tmp_path / "decoding_sweep.md").read_text().count("\n") == 2 + 4


def test_sweep_cli_reports_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.evaluate.sweep", *OVERRIDES,
                           f"checkpoint={tmp_path}/nothing.pt", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "evaluate.sweep:" in proc.stderr and "nothing.pt" in proc.stderr


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
