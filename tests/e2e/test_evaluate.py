"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
python -m train.evaluate on a tiny real export and checkpoint: scores, baselines, report, pictures.
The rest is tests/unit/test_evaluate.py."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.config import REPO_ROOT
from pipeline.drums import DrumMap
from pipeline.store import Song
from tests.tiny_checkpoint import OVERRIDES, SEQ_LEN, SPB, make_checkpoint, make_ready
from train.evaluate.baselines import FrequencyBaseline
from train.evaluate.next_step import model_probs, score_windows
from train.evaluate.run import evaluate
from train.training.checkpoint import load_for_inference
from tests.unit.test_evaluate import BPP, ROWS, _cfg, _songs, _windows, tiny  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_cli_writes_metrics_pictures_and_a_report_that_embeds_them(tiny, tmp_path):
    data, ckpt = tiny
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", *OVERRIDES, f"checkpoint={ckpt.parent}",
                           "split=validation", f"paths.data_dir={data}", f"evaluate.out_dir={out}",
                           "evaluate.generated.max_samples=6", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"Report: {out}/report.md" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["scores"]) == ROWS and m["split"] == "validation"
    # 3 songs of 128 steps -> 2 windows each, plus one 40-step song -> 1 padded window; every step
    # but each song's first is predicted, once
    assert m["windows"] == 7 and m["scores"]["model"]["scored_steps"] == 3 * 127 + 39 == m["predictable_steps"]
    for row in m["scores"].values():
        assert np.isfinite(row["nll_bits_per_step"]) and 0 < row["threshold"] < 1
        lo, hi = row["ci95"]["nll_bits_per_step"]
        assert lo <= row["nll_bits_per_step"] <= hi and lo < hi
        assert row["ci95"]["f1"][0] <= row["f1"] <= row["ci95"]["f1"][1]
        assert 0 <= row["f1"] <= 1 and set(row["per_drum"]) == set(DrumMap.default().names)
    assert m["generated_samples"] == 6
    gvr = m["generated_vs_real"]
    assert {"avg_hits", "syncopation", "drum_density", "vel_mean", "accent", "swing_8", "timing_spread"} <= set(gvr)
    for c in gvr.values():
        lo, hi = c["ci95"]["overlap_area"]                  # bootstrap over the real windows' songs
        assert lo <= hi and np.isfinite(c["kl_divergence"])
    judge = m["judge"]                                      # the tables that can fail, with their calibration
    copied = judge["novelty"]["training windows, copied"]
    assert copied["found_1bar"] == copied["found_4bar"] == 1.0 and copied["longest_run_max"] == SEQ_LEN // SPB
    assert {"generated", "floor: real train vs real", "power: train, bars shuffled",
            "power: train, 20% of hits dropped"} <= set(judge["two_sample"])
    oa = judge["oa"]["rows"]
    assert set(oa) == {"generated", "training windows, copied", "real vs real (ceiling)"}
    assert all(r["mean_oa"] is not None and r["mean_oa_ci95"][0] <= r["mean_oa_ci95"][1] for r in oa.values())
    report = (out / "report.md").read_text()
    assert "| model |" in report and "| ngram |" in report and "| syncopation |" in report
    assert "| position_lag12 |" in report and "| NLL: beat_type=fill |" in report and "| F1: style=funk |" in report
    for title in ("## Novelty: copied from the training songs", "## Classifier two-sample test",
                  "## OA with its copy row and ceiling", "| real vs real (ceiling) |"):
        assert title in report and title.lstrip("#| ").rstrip(" |") in (out / "report.html").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"plots/scores.png", "plots/generated_vs_real.png", "plots/real_vs_generated_rolls.png"} <= set(images)
    for img in images:
        assert (out / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_predictable_step_is_scored_once_for_every_row(tiny, tmp_path):
    """Songs whose length is no multiple of the window: the grid's windows leave their ends, which
    a last window ending at the song's end scores, its already-scored steps masked."""
    _, ckpt = tiny
    rng = np.random.default_rng(3)
    lengths = [100, 130, 200, 64, 65, 2, 1, 37]
    songs = []
    for i, n in enumerate(lengths * 2):
        hits = (rng.random((n, 9)) < 0.2).astype(np.uint8)
        songs.append(Song(name=f"s{i}", hits=hits, velocity=hits * np.uint8(80),
                          split="validation" if i < len(lengths) else "train", style="rock"))
    data = make_ready(tmp_path / "odd", songs=songs)
    predictable = sum(n - 1 for n in lengths)
    for stride in (SEQ_LEN, 16):
        w = _windows(data, "validation", stride)
        counts = {}
        for song, start, scored in zip(w.song, w.start, w.scored):
            for t in np.flatnonzero(scored):
                key = (int(song), int(start) + 1 + int(t))
                counts[key] = counts.get(key, 0) + 1
        expected = {(i, t) for i, n in enumerate(lengths) for t in range(1, n)}
        assert set(counts) == expected and set(counts.values()) == {1}
        res = evaluate(_cfg(data, ckpt, tmp_path / f"out{stride}", f"evaluate.stride={stride}",
                            "evaluate.generated.enabled=false"))
        assert res["predictable_steps"] == predictable
        assert {r: s["scored_steps"] for r, s in res["scores"].items()} == {r: predictable for r in ROWS}
    # the 130-step song: grid windows 0 and 64 predict up to step 128; a last one from 80 adds step 129
    w = _windows(data, "validation")
    starts = w.start[w.song == 1].tolist()
    assert starts == [0, 64, 80] and w.first[w.song == 1].tolist() == [1, 65, 129]


def test_test_split_uses_the_validation_threshold(tiny, tmp_path):
    data, ckpt = tiny
    res = evaluate(_cfg(data, ckpt, tmp_path, "split=test", "evaluate.generated.max_samples=2"))
    # one real window cannot give intra-set distances: the comparison is empty, the report says so
    assert res["generated_vs_real"] == {} and "fewer than 2 real windows" in (tmp_path / "report.md").read_text()
    val = _windows(data, "validation")
    freq = FrequencyBaseline().fit(_songs(data, "train"))
    tau = score_windows(lambda x, m, a, b, y, song: freq.predict(x), val, 9, 8).total().best_threshold()
    assert res["scores"]["frequency"]["threshold"] == tau
    assert res["windows"] == 2 and res["split"] == "test"     # 96 steps: window 0 and a last one from 32
    model, _, _ = load_for_inference(ckpt)
    tau_model = score_windows(lambda x, m, a, b, y, song: model_probs(model, x, m, a, y), val, 9, 8).total().best_threshold()
    assert res["scores"]["model"]["threshold"] == tau_model


def test_data_built_elsewhere_is_scored_whole_against_the_training_export(tiny, tmp_path):
    data, ckpt = tiny
    other = make_ready(tmp_path / "other", seed=1)      # e.g. a folder of MIDI kept for testing
    res = evaluate(_cfg(other, ckpt, tmp_path, "split=all", f"evaluate.reference_store={data}/store.zarr",
                        "evaluate.generated.enabled=false"))
    # 8 train + 3 validation songs of 128 steps (2 windows), a 40-step and a 96-step song (1 + 1, 2)
    assert res["windows"] == 8 * 2 + 3 * 2 + 1 + 2 and res["reference"] == str(data / "ready")
    freq = FrequencyBaseline().fit(_songs(data, "train"))
    val = _windows(data, "validation")
    assert res["scores"]["frequency"]["threshold"] == score_windows(lambda x, m, a, b, y, song: freq.predict(x), val, 9,
                                                                    8).total().best_threshold()


@pytest.mark.parametrize("output", ["joint", "autoregressive"])
def test_joint_heads_are_scored_by_their_whole_vector_nll(tmp_path, output):
    """A joint/autoregressive model's NLL row is −log2 p(whole drum vector), not a per-drum sum."""
    data = make_ready(tmp_path / "data")
    ckpt = make_checkpoint(tmp_path / "run" / "last.pt", data / "store.zarr", train_steps=15, output=output)
    res = evaluate(_cfg(data, ckpt, tmp_path / "out", "evaluate.generated.enabled=false"))
    model, _, _ = load_for_inference(ckpt)
    w = _windows(data, "validation")
    probs, log2p = model_probs(model, w.steps, w.mask, w.start, w.targets)
    x = torch.as_tensor(w.steps, dtype=torch.float64)
    with torch.no_grad():
        inside = model.double().step_log_prob(x, start=torch.as_tensor(w.start)).numpy()   # targets in the window
    np.testing.assert_allclose(log2p[:, :-1][w.mask[:, 1:]], inside[w.mask[:, 1:]], rtol=1e-5, atol=1e-6)
    want = -log2p[w.scored].mean()
    np.testing.assert_allclose(res["scores"]["model"]["nll_bits_per_step"], want, rtol=1e-5)
    per_drum = -np.where(w.targets > 0, np.log2(probs), np.log2(1 - probs)).sum(-1)
    assert abs(per_drum[w.scored].mean() - want) > 1e-3   # not the independent formula


def test_missing_checkpoint_names_the_training_command_and_hydra_writes_under_the_data_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", *OVERRIDES, f"paths.data_dir={tmp_path}",
                           "trainer.run_name=mine"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{tmp_path}/runs" not in proc.stderr          # runs/ stays where the trainer writes it
    assert (f"runs/mine/checkpoints: no such checkpoint file or run directory (train first: `python -m train "
            f"window.seq_len={SEQ_LEN} window.stride=16 window.bars_per_phrase=2 paths.data_dir={tmp_path} "
            "trainer.run_name=mine`)") in proc.stderr
    assert list((tmp_path / "outputs").glob("*/*/.hydra/config.yaml"))   # not in the repository's outputs/
