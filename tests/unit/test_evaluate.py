"""python -m train.evaluate on a tiny real export and checkpoint: scores, baselines, report, pictures."""


import numpy as np
import pytest
import torch

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.store import Song, Store
from tests.tiny_checkpoint import OVERRIDES, SEQ_LEN, SPB, make_checkpoint, make_ready
from train.evaluate.baselines import RepeatBarBaseline
from train.evaluate.next_step import score_windows
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


FAST_JUDGE = ["evaluate.generated.max_samples=6", "evaluate.generated.bootstrap_samples=0", "evaluate.bootstrap.samples=20",
              "evaluate.judge.bootstrap_samples=20", "evaluate.judge.two_sample.folds=2",
              "evaluate.judge.two_sample.steps=5", "evaluate.preview=false"]


def test_a_style_conditioned_model_gets_guided_rows_in_the_real_windows_style_mix(tiny, tmp_path):
    """Guided samples join every judge table beside the unconditional ones, as many per style as the
    compared real windows have of it (capped); an unconditioned model's tables have no guided row."""
    import json

    data, plain = tiny
    cond = make_checkpoint(tmp_path / "cond" / "last.pt", data / "store.zarr", train_steps=5,
                           conditioning={"style": ["funk", "rock"], "beat_type": ["beat", "fill"]})
    evaluate(_cfg(data, cond, tmp_path / "cond_eval", *FAST_JUDGE, "evaluate.judge.guided.per_style=3",
                  "evaluate.judge.guided.guidance=2.5"))
    judge = json.loads((tmp_path / "cond_eval" / "metrics.json").read_text())["judge"]
    name = "guided (style, g=2.5)"
    # the compared real windows: whole 64-step windows of the 128-step validation songs 8, 10 (rock)
    # and 9 (funk), two each (song 11, funk, has 40 steps): 4 rock, 2 funk; rock capped at 3
    assert judge["guided_styles"] == {"funk": 2, "rock": 3}
    assert judge["novelty"][name]["windows"] == 5 and judge["novelty"]["generated"]["windows"] == 6
    assert set(judge["two_sample"]) >= {"generated", name} and judge["two_sample"][name]["windows_per_side"] == 5
    assert list(judge["oa"]["rows"]) == ["generated", name, "training windows, copied", "real vs real (ceiling)"]
    assert np.isfinite(judge["oa"]["rows"][name]["mean_oa"])
    shown = [t for t in judge["tables"] if t["title"] != "OA per metric, beside the copy row and the ceiling"]
    assert all(name in [row[0] for row in t["rows"]] for t in shown) and len(shown) == 3
    assert f"| {name} |" in (tmp_path / "cond_eval" / "report.md").read_text()
    # the guided windows are those sample() gives for each style's condition at that guidance
    from train.evaluate.generated import guided_sets
    from train.model import sample

    model, _, _ = load_for_inference(cond)
    cfg = _cfg(data, cond, tmp_path, "evaluate.judge.guided.guidance=2.5")
    songs = np.array([9, 9, 8])                                          # funk, funk, rock
    (rolls, _, _), = guided_sets(cfg, model, data / "ready", songs, 9)[0].values()
    funk = sample(model, 2, SEQ_LEN, num_drums=9, seed=1000, expressive=True, cond=[1, 0], guidance=2.5)[0]
    assert len(rolls) == 3 and np.array_equal(np.stack(rolls[:2]), funk)
    unguided = guided_sets(_cfg(data, cond, tmp_path, "evaluate.judge.guided.guidance=1"), model, data / "ready",
                           songs, 9)[0]["guided (style, g=1)"][0]
    assert not np.array_equal(np.stack(rolls), np.stack(unguided))

    judge = evaluate(_cfg(data, plain, tmp_path / "plain_eval", *FAST_JUDGE))["judge"]
    assert "guided_styles" not in judge and not any(
        r.startswith("guided") for table in ("novelty", "two_sample") for r in judge[table])
    assert list(judge["oa"]["rows"]) == ["generated", "training windows, copied", "real vs real (ceiling)"]
