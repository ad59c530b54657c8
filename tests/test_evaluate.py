"""python -m train.evaluate on a tiny real store and checkpoint: scores, baselines, report, pictures."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.config import REPO_ROOT, compose
from pipeline.drums import DrumMap
from pipeline.store import Song, Store, write_store
from tests.tiny_checkpoint import OVERRIDES, SEQ_LEN, SPB, make_checkpoint, make_store
from train.evaluate.baselines import FrequencyBaseline, RepeatBarBaseline
from train.evaluate.run import evaluate, model_probs, score_windows, split_windows, window_starts
from train.training.checkpoint import load_for_inference
from train.evaluate.scores import ScoreAccumulator

ROWS = {"model", "repeat_bar", "frequency", "ngram"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    store = make_store(d / "store.zarr")
    return store, make_checkpoint(d / "run" / "last.pt", store)


def _cfg(store, ckpt, out, *extra):
    return compose(OVERRIDES + [f"paths.store={store}", f"checkpoint={ckpt}", f"evaluate.out_dir={out}", *extra],
                   config_name="evaluate")


def test_cli_writes_metrics_pictures_and_a_report_that_embeds_them(tiny, tmp_path):
    store, ckpt = tiny
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", *OVERRIDES, f"checkpoint={ckpt.parent}",
                           "split=validation", f"paths.store={store}", f"evaluate.out_dir={out}",
                           "evaluate.generated.max_samples=6", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"Report: {out}/report.md" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["scores"]) == ROWS and m["split"] == "validation"
    # 3 songs of 128 steps -> 2 windows each, plus one 40-step song -> 1 padded window
    assert m["windows"] == 7 and m["scores"]["model"]["scored_steps"] == 6 * 63 + 39
    for row in m["scores"].values():
        assert np.isfinite(row["nll_bits_per_step"]) and 0 < row["threshold"] < 1
        assert 0 <= row["f1"] <= 1 and set(row["per_drum"]) == set(DrumMap.default().names)
    assert m["generated_samples"] == 6
    gvr = m["generated_vs_real"]
    assert {"avg_hits", "syncopation", "drum_density"} <= set(gvr)
    for c in gvr.values():
        assert 0 <= c["overlap_area"] <= 1 and c["kl_divergence"] >= 0
    report = (out / "report.md").read_text()
    assert "| model |" in report and "| ngram |" in report and "| syncopation |" in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"plots/scores.png", "plots/generated_vs_real.png", "plots/generated_samples.png"} <= set(images)
    for img in images:
        assert (out / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_equal_the_scores_computed_directly(tiny, tmp_path):
    store, ckpt = tiny
    res = evaluate(_cfg(store, ckpt, tmp_path, "evaluate.generated.enabled=false"))
    s = Store(store)
    windows = split_windows(s, "validation", SEQ_LEN, SEQ_LEN)
    model, _, _ = load_for_inference(ckpt)
    with torch.no_grad():
        logits = model(torch.as_tensor(windows.steps, dtype=torch.float32), start=torch.as_tensor(windows.start))[0]
    p = torch.sigmoid(logits.double()).numpy()[:, :-1]
    y, m = windows.steps[:, 1:] > 0, windows.mask[:, 1:]
    nll = -np.where(y, np.log2(p), np.log2(1 - p)).sum(-1)[m].mean()
    np.testing.assert_allclose(res["scores"]["model"]["nll_bits_per_step"], nll, rtol=1e-9)
    train = np.concatenate([np.asarray(s.hits[s.song_slice(int(i))]) for i in s.songs_in_split("train")])
    rates = np.clip(train.mean(0), 1e-4, 1 - 1e-4)
    nll_f = -np.where(y, np.log2(rates), np.log2(1 - rates)).sum(-1)[m].mean()
    np.testing.assert_allclose(res["scores"]["frequency"]["nll_bits_per_step"], nll_f, rtol=1e-9)
    # the n-gram's n and alpha are the grid point of lowest validation NLL
    grid = res["ngram_selection"]
    best = min(grid, key=lambda g: g["nll_bits_per_step"])
    assert {g["n"] for g in grid} == set(range(2, 8))       # ngram_max_n 8, capped at 7 for 9 drums
    assert (res["scores"]["ngram"]["n"], res["scores"]["ngram"]["alpha"]) == (best["n"], best["alpha"])
    np.testing.assert_allclose(res["scores"]["ngram"]["nll_bits_per_step"], best["nll_bits_per_step"])
    # the trained tiny model has learnt the grooves: better than the per-drum frequencies
    assert res["scores"]["model"]["nll_bits_per_step"] < res["scores"]["frequency"]["nll_bits_per_step"]


def test_test_split_uses_the_validation_threshold(tiny, tmp_path):
    store, ckpt = tiny
    res = evaluate(_cfg(store, ckpt, tmp_path, "split=test", "evaluate.generated.max_samples=2"))
    # one real window cannot give intra-set distances: the comparison is empty, the report says so
    assert res["generated_vs_real"] == {} and "fewer than 2 real windows" in (tmp_path / "report.md").read_text()
    s = Store(store)
    val = split_windows(s, "validation", SEQ_LEN, SEQ_LEN)
    freq = FrequencyBaseline().fit([np.asarray(s.hits[s.song_slice(int(i))]) for i in s.songs_in_split("train")])
    tau = score_windows(lambda x, m, a, b: freq.predict(x), val, 9, 8).best_threshold()
    assert res["scores"]["frequency"]["threshold"] == tau
    assert res["windows"] == 1 and res["split"] == "test"
    model, _, _ = load_for_inference(ckpt)
    tau_model = score_windows(lambda x, m, a, b: model_probs(model, x, m, a), val, 9, 8).best_threshold()
    assert res["scores"]["model"]["threshold"] == tau_model


def test_a_store_built_elsewhere_is_scored_whole_against_the_training_store(tiny, tmp_path):
    store, ckpt = tiny
    other = make_store(tmp_path / "other.zarr", seed=1)      # e.g. a folder of MIDI kept for testing
    res = evaluate(_cfg(other, ckpt, tmp_path, "split=all", f"evaluate.reference_store={store}",
                        "evaluate.generated.enabled=false"))
    # 8 train + 3 validation songs of 128 steps (2 windows), a 40-step and a 96-step song (1 each)
    assert res["windows"] == 8 * 2 + 3 * 2 + 1 + 1 and res["reference_store"] == str(store)
    s = Store(store)
    freq = FrequencyBaseline().fit([np.asarray(s.hits[s.song_slice(int(i))]) for i in s.songs_in_split("train")])
    val = split_windows(s, "validation", SEQ_LEN, SEQ_LEN)
    assert res["scores"]["frequency"]["threshold"] == score_windows(lambda x, m, a, b: freq.predict(x), val, 9,
                                                                    8).best_threshold()


@pytest.mark.parametrize("output", ["joint", "autoregressive"])
def test_joint_heads_are_scored_by_their_whole_vector_nll(tmp_path, output):
    """A joint/autoregressive model's NLL row is −log2 p(whole drum vector), not a per-drum sum."""
    store = make_store(tmp_path / "store.zarr")
    ckpt = make_checkpoint(tmp_path / "run" / "last.pt", store, train_steps=15, output=output)
    res = evaluate(_cfg(store, ckpt, tmp_path, "evaluate.generated.enabled=false"))
    model, _, _ = load_for_inference(ckpt)
    val = split_windows(Store(store), "validation", SEQ_LEN, SEQ_LEN)
    x = torch.as_tensor(val.steps, dtype=torch.float64)
    bits = model.double().step_log_prob(x, start=torch.as_tensor(val.start))
    want = -bits[torch.as_tensor(val.mask[:, 1:])].mean().item()
    np.testing.assert_allclose(res["scores"]["model"]["nll_bits_per_step"], want, rtol=1e-5)
    probs, _ = model_probs(model.float(), val.steps, val.mask, val.start)
    per_drum = -np.where(val.steps[:, 1:] > 0, np.log2(probs[:, :-1]), np.log2(1 - probs[:, :-1]))
    assert abs(per_drum.sum(-1)[val.mask[:, 1:]].mean() - want) > 1e-3   # not the independent formula


def test_a_stride_off_the_bar_lines_is_a_config_error(tiny, tmp_path):
    from train.training.optim import ConfigError

    with pytest.raises(ConfigError, match="evaluate.stride=24 is not a whole number of bars"):
        evaluate(_cfg(*tiny, tmp_path, "evaluate.stride=24"))


def test_windows_follow_the_metrics_stage_rule(tiny):
    assert window_starts(0, 64, 16) == [] and window_starts(40, 64, 16) == [0]
    assert window_starts(128, 64, 16) == [0, 16, 32, 48, 64] and window_starts(130, 64, 64) == [0, 64]
    s = Store(tiny[0])
    w = split_windows(s, "validation", SEQ_LEN, 16)
    assert len(w) == 3 * 5 + 1
    short = np.flatnonzero(w.mask.sum(1) < SEQ_LEN)
    assert len(short) == 1 and w.mask[short[0]].sum() == 40 and w.steps[short[0], 40:].sum() == 0
    i = 3
    np.testing.assert_array_equal(w.steps[i], np.asarray(s.hits[s.song_slice(int(w.song[i]))])[w.start[i]:][:SEQ_LEN])


def test_repeat_bar_on_a_store_of_repeating_bars_is_near_perfect(tmp_path):
    dm = DrumMap.default()
    bar = np.zeros((SPB, dm.num_drums), np.uint8)
    bar[0::4, 0], bar[4::8, 1], bar[::2, 2] = 1, 1, 1
    songs = [Song(name=f"s{i}", hits=np.tile(bar, (16, 1)), velocity=np.tile(bar, (16, 1)) * 100,
                  split=split) for i, split in enumerate(["train", "validation"])]
    write_store(tmp_path / "rep.zarr", songs, {**dm.to_attrs(), "steps_per_quarter": 4})
    w = split_windows(Store(tmp_path / "rep.zarr"), "validation", 256, 256)
    rb = RepeatBarBaseline(SPB).fit([songs[0].hits])
    acc = score_windows(lambda x, m, a, b: rb.predict(x, m, b), w, dm.num_drums, 4)
    res = acc.result(acc.best_threshold())
    # only the first bar (1/16 of the steps) is not a repeat: it costs the frequency model's ~2 bits/step
    assert res["f1"] > 0.95 and res["nll_bits_per_step"] < 0.2
    tail = ScoreAccumulator(dm.num_drums)
    tail.update(rb.predict(w.steps)[:, SPB - 1:], w.steps[:, SPB - 1:])
    assert tail.nll_bits / tail.steps < 2e-3       # every repeated bar: about D * 1.44e-4 bits
    assert tail.result(0.5)["f1"] == 1.0


def test_bad_checkpoint_or_other_drums_fail_clearly(tiny, tmp_path):
    store, ckpt = tiny
    with pytest.raises(FileNotFoundError, match="nowhere.pt: no such checkpoint"):
        evaluate(_cfg(store, tmp_path / "nowhere.pt", tmp_path))
    other = torch.load(ckpt, weights_only=True)
    other["drum_names"] = ["k"] * 9
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trained on drums"):
        evaluate(_cfg(store, tmp_path / "other.pt", tmp_path))
    assert not (tmp_path / "metrics.json").exists()


def test_songs_of_another_meter_are_left_out_as_in_training(tiny, tmp_path):
    """3/4 songs (12 steps a bar) are not in the trainer's windows: evaluation leaves them out
    for every row, fitting included, and says how many."""
    store, ckpt = tiny
    src = Store(store)
    hits = np.asarray(src.hits[:])
    songs = [Song(name=str(src.meta["name"][i]), hits=hits[src.song_slice(i)],
                  velocity=hits[src.song_slice(i)] * np.uint8(90), split=str(src.meta["split"][i]),
                  steps_per_bar=SPB) for i in range(src.num_songs)]
    waltz = np.zeros((12 * 16, 9), np.uint8)
    waltz[::12, 0] = waltz[6::12, 1] = waltz[::3, 2] = 1
    songs += [Song(name="waltz_val", hits=waltz, velocity=waltz * np.uint8(90), split="validation", steps_per_bar=12),
              Song(name="waltz_train", hits=waltz, velocity=waltz * np.uint8(90), split="train", steps_per_bar=12)]
    mixed = tmp_path / "mixed.zarr"
    write_store(mixed, songs, {**DrumMap.default().to_attrs(), "steps_per_quarter": 4, "source_hash": "mixed"})
    res = evaluate(_cfg(mixed, ckpt, tmp_path / "out", "evaluate.generated.enabled=false"))
    alone = evaluate(_cfg(store, ckpt, tmp_path / "alone", "evaluate.generated.enabled=false"))
    # 192 steps of 3/4 at seq_len 64 would be 3 windows: left out, counted
    assert (res["excluded_songs"], res["excluded_windows"]) == (1, 3)
    assert (alone["excluded_songs"], alone["excluded_windows"]) == (0, 0)
    assert res["windows"] == alone["windows"] == 7
    for row in ROWS:                      # same windows scored, and the baselines fitted on 4/4 only
        assert res["scores"][row]["scored_steps"] == alone["scores"][row]["scored_steps"]
        np.testing.assert_allclose(res["scores"][row]["nll_bits_per_step"],
                                   alone["scores"][row]["nll_bits_per_step"], rtol=1e-12)
    assert "1 songs (3 windows) of other meters left out" in (tmp_path / "out" / "report.md").read_text()
    w = split_windows(Store(mixed), "validation", SEQ_LEN, SEQ_LEN, steps_per_bar=12)
    assert len(w) == 3 and set(w.steps_per_bar) == {12} and w.excluded_songs == 4
