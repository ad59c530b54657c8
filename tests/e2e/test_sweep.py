"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
python -m train.evaluate.sweep: decoding settings ranked by generated-vs-real fit.
The rest is tests/unit/test_sweep.py."""
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
