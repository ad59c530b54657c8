"""python -m train.evaluate on a tiny real export and checkpoint: scores, baselines, report, pictures."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.config import REPO_ROOT, compose
from pipeline.drums import DrumMap
from pipeline.store import Song, Store
from tests.tiny_checkpoint import OVERRIDES, SEQ_LEN, SPB, make_checkpoint, make_ready
from train.evaluate.baselines import FrequencyBaseline, RepeatBarBaseline
from train.evaluate.next_step import model_probs, score_windows
from train.evaluate.run import evaluate
from train.evaluate.scores import ScoreAccumulator
from train.evaluate.windows import split_windows
from train.training.checkpoint import load_for_inference

ROWS = {"model", "repeat_bar", "frequency", "position", "position_lag12", "ngram"}
BPP = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    make_ready(d)
    return d, make_checkpoint(d / "run" / "last.pt", d / "store.zarr")


def _cfg(data_dir, ckpt, out, *extra):
    return compose(OVERRIDES + [f"paths.data_dir={data_dir}", f"checkpoint={ckpt}", f"evaluate.out_dir={out}",
                                *extra], config_name="evaluate")


def _windows(data_dir, split, stride=SEQ_LEN):
    return split_windows(data_dir / "ready", split, SEQ_LEN, stride, SPB, BPP)


def _songs(data_dir, split):
    s = Store(data_dir / "store.zarr")
    return [np.asarray(s.hits[s.song_slice(int(i))]) for i in s.songs_in_split(split)]


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


def test_rows_equal_the_scores_computed_directly(tiny, tmp_path):
    data, ckpt = tiny
    res = evaluate(_cfg(data, ckpt, tmp_path, "evaluate.generated.enabled=false"))
    # frequency: the same p at every step, so its NLL is the mean over every song step but the first
    rates = np.clip(np.concatenate(_songs(data, "train")).mean(0), 1e-4, 1 - 1e-4)
    y = np.concatenate([song[1:] for song in _songs(data, "validation")]) > 0
    nll_f = -np.where(y, np.log2(rates), np.log2(1 - rates)).sum(-1).mean()
    np.testing.assert_allclose(res["scores"]["frequency"]["nll_bits_per_step"], nll_f, rtol=1e-9)
    # model: windows 0..63 and 64..127 of each song; each position predicts the step after it
    model, _, _ = load_for_inference(ckpt)
    bits, n = 0.0, 0
    for song in _songs(data, "validation"):
        for a in range(0, len(song), SEQ_LEN):
            x = torch.as_tensor(song[a:a + SEQ_LEN][None], dtype=torch.float32)
            with torch.no_grad():
                p = torch.sigmoid(model(x, start=torch.tensor([a]))[0].double())[0].numpy()
            target = song[a + 1:a + SEQ_LEN + 1] > 0
            p = p[:len(target)]
            bits -= np.where(target, np.log2(p), np.log2(1 - p)).sum()
            n += len(target)
    np.testing.assert_allclose(res["scores"]["model"]["nll_bits_per_step"], bits / n, rtol=1e-6)  # float32 batches
    # the n-gram's n and alpha are the grid point of lowest validation NLL
    grid = res["ngram_selection"]
    best = min(grid, key=lambda g: g["nll_bits_per_step"])
    assert {g["n"] for g in grid} == set(range(2, 8))       # ngram_max_n 8, capped at 7 for 9 drums
    assert (res["scores"]["ngram"]["n"], res["scores"]["ngram"]["alpha"]) == (best["n"], best["alpha"])
    np.testing.assert_allclose(res["scores"]["ngram"]["nll_bits_per_step"], best["nll_bits_per_step"])
    # the trained tiny model has learnt the grooves: better than the per-drum frequencies
    assert res["scores"]["model"]["nll_bits_per_step"] < res["scores"]["frequency"]["nll_bits_per_step"]
    # the position tables know where the backbeat falls: better than the frequencies too
    assert res["scores"]["position"]["nll_bits_per_step"] < res["scores"]["frequency"]["nll_bits_per_step"]


def test_subsets_pool_to_the_whole_split(tiny, tmp_path):
    data, ckpt = tiny
    res = evaluate(_cfg(data, ckpt, tmp_path, "evaluate.generated.enabled=false"))
    for field in ("beat_type", "style"):
        subs = {k: v for k, v in res["subsets"].items() if k.startswith(field + "=")}
        assert len(subs) == 2 and sum(v["songs"] for v in subs.values()) == res["songs"]
        for row, whole in res["scores"].items():
            steps = [v["scores"][row]["scored_steps"] for v in subs.values()]
            nll = [v["scores"][row]["nll_bits_per_step"] for v in subs.values()]
            assert sum(steps) == whole["scored_steps"]
            np.testing.assert_allclose(np.dot(steps, nll) / sum(steps), whole["nll_bits_per_step"], rtol=1e-9)
    assert {"style=funk", "style=rock"} <= set(res["subsets"])          # funk/groove2 pooled into funk


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


def test_a_stride_off_the_bar_lines_is_a_config_error(tiny, tmp_path):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="evaluate.stride=24 is not a whole number of bars"):
        evaluate(_cfg(*tiny, tmp_path, "evaluate.stride=24"))


def test_windows_are_read_from_the_export(tiny):
    data, _ = tiny
    s = Store(data / "store.zarr")
    w = _windows(data, "validation", 16)
    assert w.start[w.song == 8].tolist() == [0, 16, 32, 48, 64]          # the training grid at stride 16
    short = np.flatnonzero(w.mask.sum(1) < SEQ_LEN)
    assert len(short) == 1 and w.mask[short[0]].sum() == 40 and w.steps[short[0], 40:].sum() == 0
    i = 3
    song = np.asarray(s.hits[s.song_slice(int(w.song[i]))])
    np.testing.assert_array_equal(w.steps[i], song[w.start[i]:][:SEQ_LEN])
    np.testing.assert_array_equal(w.targets[i], song[w.start[i] + 1:][:SEQ_LEN])


def test_repeat_bar_on_a_store_of_repeating_bars_is_near_perfect(tmp_path):
    dm = DrumMap.default()
    bar = np.zeros((SPB, dm.num_drums), np.uint8)
    bar[0::4, 0], bar[4::8, 1], bar[::2, 2] = 1, 1, 1
    songs = [Song(name=f"s{i}", hits=np.tile(bar, (16, 1)), velocity=np.tile(bar, (16, 1)) * 100,
                  split=split) for i, split in enumerate(["train", "validation"])]
    w = _windows(make_ready(tmp_path, songs=songs), "validation")
    rb = RepeatBarBaseline(SPB).fit([songs[0].hits])
    acc = score_windows(lambda x, m, a, b, y, song: rb.predict(x, m, b), w, dm.num_drums, 4).total()
    res = acc.result(acc.best_threshold())
    # only each window's first bar (15 of its 64 predictions) is not a repeat: the frequency model's ~2 bits/step
    assert res["f1"] > 0.85 and res["nll_bits_per_step"] < 0.6
    tail = ScoreAccumulator(dm.num_drums)
    tail.update(rb.predict(w.steps)[:, SPB - 1:], w.steps[:, SPB - 1:])
    assert tail.nll_bits / tail.steps < 2e-3       # every repeated bar: about D * 1.44e-4 bits
    assert tail.result(0.5)["f1"] == 1.0


def test_bad_checkpoint_or_other_drums_fail_clearly(tiny, tmp_path):
    data, ckpt = tiny
    with pytest.raises(FileNotFoundError, match="nowhere.pt: no such checkpoint"):
        evaluate(_cfg(data, tmp_path / "nowhere.pt", tmp_path))
    other = torch.load(ckpt, weights_only=True)
    other["drum_names"] = ["k"] * 9
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trained on drums"):
        evaluate(_cfg(data, tmp_path / "other.pt", tmp_path))
    with pytest.raises(FileNotFoundError, match="neither an export"):
        evaluate(_cfg(tmp_path / "nothing", ckpt, tmp_path))
    assert not (tmp_path / "metrics.json").exists()


def test_songs_of_another_meter_are_scored_on_their_own_bar(tiny, tmp_path):
    """A 3/4 song (12 steps a bar) beside 4/4 ones is scored by every row, counted by meter, and
    scored as a subset of its own; the 4/4 songs score as without it where nothing is fitted on
    the 3/4 one (the model; the position tables, one per meter)."""
    data, ckpt = tiny
    src = Store(data / "store.zarr")
    hits = np.asarray(src.hits[:])
    songs = [Song(name=str(src.meta["name"][i]), hits=hits[src.song_slice(i)],
                  velocity=hits[src.song_slice(i)] * np.uint8(90), split=str(src.meta["split"][i]),
                  steps_per_bar=SPB) for i in range(src.num_songs)]
    waltz = np.zeros((12 * 16, 9), np.uint8)
    waltz[::12, 0] = waltz[6::12, 1] = waltz[::3, 2] = 1
    mixed = make_ready(tmp_path / "mixed", songs=songs + [
        Song(name="waltz_val", hits=waltz, velocity=waltz * np.uint8(90), split="validation", steps_per_bar=12,
             beats_per_bar=3),
        Song(name="waltz_train", hits=waltz, velocity=waltz * np.uint8(90), split="train", steps_per_bar=12,
             beats_per_bar=3)])
    alone = make_ready(tmp_path / "alone", songs=songs)
    res = evaluate(_cfg(mixed, ckpt, tmp_path / "out", "evaluate.generated.enabled=false"))
    ref = evaluate(_cfg(alone, ckpt, tmp_path / "ref", "evaluate.generated.enabled=false"))
    assert res["meters"] == {"4/4": ref["songs"], "3/4": 1} and ref["meters"] == {"4/4": ref["songs"]}
    assert res["songs"] == ref["songs"] + 1 and res["predictable_steps"] == ref["predictable_steps"] + 191
    assert res["windows"] > ref["windows"] == 7
    four = res["subsets"]["meter=4/4"]["scores"]
    for row in ROWS:                      # the 3/4 song's 191 steps are scored by every row
        assert res["scores"][row]["scored_steps"] == ref["scores"][row]["scored_steps"] + 191
        assert res["subsets"]["meter=3/4"]["scores"][row]["scored_steps"] == 191
        assert np.isfinite(res["subsets"]["meter=3/4"]["scores"][row]["nll_bits_per_step"])
        assert four[row]["scored_steps"] == ref["scores"][row]["scored_steps"]
    for row in ("model", "position", "position_lag12"):
        np.testing.assert_allclose(four[row]["nll_bits_per_step"], ref["scores"][row]["nll_bits_per_step"],
                                   rtol=1e-6)
    assert "1 songs in 3/4" in (tmp_path / "out" / "report.md").read_text()
    assert "1 in 3/4" in (tmp_path / "out" / "report.html").read_text()


def test_one_rule_for_reports_and_the_experiment_recipe():
    """evaluate writes <data_dir>/eval/<run>/<split>/; generate names that run's validation report;
    `+experiment=groove_gru` selects the Groove data, the run name and the README's recipe."""
    ev = compose(["+experiment=groove_gru", "split=test"], config_name="evaluate")
    gen = compose(["+experiment=groove_gru"], config_name="generate")
    assert ev.checkpoint == "runs/groove_gru/checkpoints" and ev.paths.ready == "data/groove/ready"
    assert ev.evaluate.out_dir == "data/groove/eval/groove_gru/test"
    assert gen.generate.report == "data/groove/eval/groove_gru/validation/report.md"
    tr = compose(["+experiment=groove_transformer"])
    assert tr.model.use_transformer and tr.trainer.scheduler.config.warmup_steps == 50
    assert (tr.trainer.max_epochs, tr.trainer.limit_train_batches, tr.trainer.batch_size) == (2, -1, 32)


def test_missing_checkpoint_names_the_training_command_and_hydra_writes_under_the_data_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", *OVERRIDES, f"paths.data_dir={tmp_path}",
                           "trainer.run_name=mine"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{tmp_path}/runs" not in proc.stderr          # runs/ stays where the trainer writes it
    assert (f"runs/mine/checkpoints: no such checkpoint file or run directory (train first: `python -m train "
            f"window.seq_len={SEQ_LEN} window.stride=16 window.bars_per_phrase=2 paths.data_dir={tmp_path} "
            "trainer.run_name=mine`)") in proc.stderr
    assert list((tmp_path / "outputs").glob("*/*/.hydra/config.yaml"))   # not in the repository's outputs/


def test_expressive_scores_against_direct_computation(tiny, tmp_path):
    """Teacher-forced velocity/offset errors on the true-hit cells (every scored step once), and the
    per-drum-and-position mean baseline, recomputed here from the store by hand."""
    data, ckpt = tiny
    res = evaluate(_cfg(data, ckpt, tmp_path, "evaluate.generated.enabled=false"))
    e = res["expressive"]
    s = Store(data / "store.zarr")
    windows = _windows(data, "validation")
    model, _, _ = load_for_inference(ckpt)
    played = np.zeros((2, *windows.steps.shape))       # the true played values the history reads
    for n, (song, a) in enumerate(zip(windows.song, windows.start)):
        for k, arr in enumerate((s.velocity, s.offset)):
            rows = np.asarray(arr[s.song_slice(int(song))])[a:a + SEQ_LEN]
            played[k, n, :len(rows)] = rows
    assert model.config["expressive_history"]
    with torch.no_grad():
        vel, off = (p.numpy() for p in model(torch.as_tensor(windows.steps, dtype=torch.float32),
                                             mask=torch.as_tensor(windows.mask),
                                             start=torch.as_tensor(windows.start),
                                             velocity=torch.as_tensor(played[0]), offset=torch.as_tensor(played[1]))[3])
    sums, counts = np.zeros((SPB, 9)), np.zeros((SPB, 9))
    for i in s.songs_in_split("train"):
        v = np.asarray(s.velocity[s.song_slice(int(i))], np.float64)
        for t, d in zip(*np.nonzero(v)):
            sums[t % SPB, d] += v[t, d] / 127
            counts[t % SPB, d] += 1
    true_v, true_o, pv, po, base = [], [], [], [], []
    scored = windows.scored
    for n, (song, a) in enumerate(zip(windows.song, windows.start)):
        v = np.asarray(s.velocity[s.song_slice(int(song))])[a:a + SEQ_LEN]
        o = np.asarray(s.offset[s.song_slice(int(song))])[a:a + SEQ_LEN]
        for t in range(1, len(v)):
            if not scored[n, t - 1]:          # scored by an earlier window of the song
                continue
            for d in np.flatnonzero(v[t]):
                true_v.append(v[t, d] / 127), true_o.append(o[t, d] / 128)
                pv.append(vel[n, t - 1, d]), po.append(off[n, t - 1, d])
                base.append(sums[(a + t) % SPB, d] / counts[(a + t) % SPB, d])
    true_v, pv, base = np.array(true_v), np.array(pv), np.array(base)
    assert e["hits"] == len(true_v) > 0
    assert e["model"]["velocity_mse"] == pytest.approx(np.mean((pv - true_v) ** 2), rel=1e-5)
    assert e["model"]["offset_mse"] == pytest.approx(np.mean((np.array(po) - np.array(true_o)) ** 2), rel=1e-5)
    assert e["model"]["velocity_corr"] == pytest.approx(np.corrcoef(pv, true_v)[0, 1], rel=1e-4)
    assert e["baseline"]["velocity_mse"] == pytest.approx(np.mean((base - true_v) ** 2), rel=1e-6)
    assert e["baseline"]["offset_mse"] == pytest.approx(np.mean(np.array(true_o) ** 2), rel=1e-6)
    assert "## Velocity and timing" in (tmp_path / "report.md").read_text()


def test_real_windows_leave_out_short_songs_for_generated_vs_real():
    """A one-bar fill (or a song's partial last window) does not join the real set that 16-bar
    generated windows are compared with, unless fewer than two windows are long enough."""
    from train.evaluate.generated import real_windows
    from train.evaluate.windows import Windows
    L, D = 8, 3
    lengths = [8, 8, 3, 5]                       # two full windows, a short song, a partial one
    real = np.zeros((4, L + 1), bool)
    for i, n in enumerate(lengths):
        real[i, :n] = True
    rows = np.ones((4, L + 1, D), np.uint8)
    w = Windows(rows=rows, real=real, song=np.arange(4), start=np.zeros(4, np.int64),
                first=np.zeros(4, np.int64), steps_per_bar=np.full(4, 4))
    rolls, songs, _ = real_windows(w, min_steps=L)
    assert [len(r) for r in rolls] == [8, 8] and list(songs) == [0, 1]
    assert [len(r) for r in real_windows(w)[0]] == lengths              # 0: every window
    assert [len(r) for r in real_windows(w, min_steps=6)[0]] == [8, 8]
    w.real[1, 5:] = False                        # one full window left: too few, keep all
    assert len(real_windows(w, min_steps=L)[0]) == 4
