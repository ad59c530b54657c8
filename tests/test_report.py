"""The HTML pages (train/report): a tiny run's pages opened in headless Chromium, the fallback
without FluidSynth, the audio cache, the dvc render stage's naming, velocity shading, real excerpts.

Needs the Debian packages fluidsynth, fluid-soundfont-gm and chromium (.ci/run installs them).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from common.config import REPO_ROOT, compose
from pipeline.drums import DrumMap
from pipeline.midi import write_midi
from pipeline.store import Store
from tests.browser import chromium, open_page
from tests.tiny_checkpoint import OVERRIDES, SPB, make_checkpoint, make_ready
from train.report.audio import audio_name, find_synth, render_all
from train.report.pages import pick_real
from train.report.render import render_folders
from PIL import Image

from train.report.rolls import (BAND, BAR_LINE, MIN_ALPHA, cell_size, drum_color, grid_pixels, rgb, roll_image,
                              roll_picture, save_roll, save_roll_columns, save_roll_sheet)

SYNTH, MISSING = find_synth(compose([]).preview)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_ready(tmp_path_factory.mktemp("report"))   # store, metrics and the export evaluate reads
    store = d / "store.zarr"
    return store, make_checkpoint(d / "run" / "last.pt", store, train_steps=20)


def _generate(tiny, out: Path, *extra):
    from train.generate.run import run

    store, ckpt = tiny
    return run(compose(OVERRIDES + [f"checkpoint={ckpt}", f"paths.store={store}", f"generate.out_dir={out}",
                                    "generate.bars=2", *extra], config_name="generate"))


def _need_tools():
    if SYNTH is None:
        pytest.fail(MISSING)
    if chromium() is None:
        pytest.fail("chromium not found (Debian: apt-get install chromium; or set HIERDRUMS_CHROMIUM)")


def _assert_all_loaded(page: Path, probe: dict) -> None:
    """Every image, audio file and MIDI link the page references exists and (images, audio) loaded."""
    assert probe["images"] and probe["audio"]
    for img in probe["images"]:
        assert (page.parent / img["src"]).is_file(), img
        assert img["complete"] and img["width"] > 0, f"broken image {img}"
    for audio in probe["audio"]:
        assert (page.parent / audio["src"]).is_file(), audio
        assert audio["error"] is None and audio["duration"] > 0, f"audio did not load: {audio}"
    for link in probe["links"]:
        assert (page.parent / link).is_file(), link


def test_pages_open_in_chromium_with_every_picture_and_sound(tiny, tmp_path):
    _need_tools()
    from train.evaluate.run import evaluate

    result = _generate(tiny, tmp_path / "gen", "generate.num_samples=3", "generate.seed=5")
    page = result["page"]
    assert page == tmp_path / "gen" / "index.html"
    shot = tmp_path / "generate.png"
    probe = open_page(page, screenshot=shot)
    _assert_all_loaded(page, probe)
    assert probe["generated"] == 3 and probe["real"] == 3       # each sample beside a real excerpt
    assert len(probe["audio"]) == 6 and len(probe["images"]) == 6 and probe["notices"] == []
    assert {Path(m).name for m in probe["links"]} >= {f"sample_{i:03d}.mid" for i in range(3)}
    assert shot.stat().st_size > 10_000

    store, ckpt = tiny
    cfg = compose(OVERRIDES + [f"checkpoint={ckpt}", f"paths.data_dir={store.parent}", f"evaluate.out_dir={tmp_path / 'eval'}",
                               "evaluate.sheet_samples=2", "evaluate.generated.max_samples=4",
                               "evaluate.baselines.ngram_n=3", "evaluate.baselines.ngram_alpha=1.0"],
                  config_name="evaluate")
    evaluate(cfg)
    page = tmp_path / "eval" / "report.html"
    probe = open_page(page, screenshot=tmp_path / "evaluate.png")
    _assert_all_loaded(page, probe)
    assert probe["generated"] == 2 and probe["real"] == 2
    srcs = [i["src"] for i in probe["images"]]
    assert "plots/scores.png" in srcs and "plots/generated_vs_real.png" in srcs
    html = page.read_text()
    assert str(ckpt) in html and "repeat_bar" in html and "overlap_area" not in html


def test_without_fluidsynth_the_page_says_what_to_install_once_per_run(tiny, tmp_path):
    store, ckpt = tiny
    out = tmp_path / "gen"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}   # the venv only: no fluidsynth
    proc = subprocess.run([sys.executable, "-m", "train.generate", *OVERRIDES, f"checkpoint={ckpt}",
                           f"paths.store={store}", f"generate.out_dir={out}", "generate.num_samples=3",
                           "generate.bars=1", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = "No audio previews: FluidSynth (`fluidsynth` is not on PATH)"
    assert proc.stderr.count(line) == 1 and "apt-get install fluidsynth fluid-soundfont-gm" in proc.stderr
    html = (out / "index.html").read_text()
    assert "<audio" not in html and html.count(line) == 1
    assert html.count("no audio preview (see above)") == 6      # each player replaced: 3 samples + 3 real
    assert not (out / "preview" / "audio").exists()
    assert "Listen:" in proc.stdout and str(out / "index.html") in proc.stdout
    if chromium() is not None:
        probe = open_page(out / "index.html")
        assert probe["audio"] == [] and any(line in n for n in probe["notices"]) and probe["generated"] == 3
        assert all(i["width"] > 0 for i in probe["images"])


def test_preview_false_writes_the_page_without_audio(tiny, tmp_path):
    result = _generate(tiny, tmp_path / "gen", "generate.num_samples=2", "generate.preview=false")
    html = result["page"].read_text()
    assert "<audio" not in html and "Audio previews are off" in html
    assert html.count('class="clip generated"') == 2
    assert not (tmp_path / "gen" / "preview" / "audio").exists()


def test_render_stage_writes_the_files_the_page_named(tiny, tmp_path):
    """preview.render=false (how dvc runs generate): the page names audio the render stage writes."""
    _need_tools()
    out, audio = tmp_path / "gen", tmp_path / "audio"
    result = _generate(tiny, out, "generate.num_samples=2", "preview.render=false", f"generate.audio_dir={audio}")
    links = re.findall(r'<audio[^>]* src="([^"]+)"', result["page"].read_text())
    assert len(links) == 4 and not audio.exists()
    cfg = compose([f"paths.data_dir={tmp_path}", f"render.folders=[{{midi: {out}, audio: {audio}}}]"],
                  config_name="render")
    done = render_folders(cfg)
    assert len(done) == 4
    assert sorted((out / link).resolve() for link in links) == sorted(p.resolve() for p in audio.iterdir())


def test_audio_cache_renders_unchanged_midi_once_and_reports_bad_files(tmp_path, capsys):
    _need_tools()
    dm = DrumMap.default()
    hits = np.zeros((32, dm.num_drums), np.uint8)
    hits[::4, 0] = 1
    a = write_midi(tmp_path / "a.mid", hits, drum_map=dm)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a midi file")
    first = render_all(SYNTH, [a, bad], tmp_path / "audio")
    assert list(first) == [a] and first[a].name == audio_name(SYNTH, a) and first[a].stat().st_size > 1000
    err = capsys.readouterr().err
    assert str(bad) in err and "could not render" in err
    stamp = first[a].stat().st_mtime_ns
    assert render_all(SYNTH, [a], tmp_path / "audio")[a].stat().st_mtime_ns == stamp   # cached, not redone
    keep = tmp_path / "audio" / "other-0123456789.ogg"   # not one of these MIDI files' renders
    keep.write_bytes(b"x")
    hits[2, 1] = 1
    write_midi(a, hits, drum_map=dm)
    assert audio_name(SYNTH, a) != first[a].name      # other drums, other file
    second = render_all(SYNTH, [a], tmp_path / "audio")
    # the old render of a.mid is gone, the other file stays, no temp file is left
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == sorted([second[a].name, keep.name])


def test_roll_shading_follows_velocity():
    hits = np.zeros((4, 2), np.uint8)
    hits[:, 0] = 1
    velocity = hits * np.array([[1], [40], [90], [127]], np.uint8)
    alpha = roll_image(hits, ["kick", "snare"], velocity)[..., 3]
    assert alpha[0, 0] == pytest.approx(MIN_ALPHA + (1 - MIN_ALPHA) / 127)
    assert np.all(np.diff(alpha[0]) > 0) and alpha[0, 3] == pytest.approx(1.0)
    assert np.all(alpha[1] == 0)                                  # no hit, nothing drawn
    np.testing.assert_array_equal(roll_image(hits, ["kick", "snare"], None)[..., 3], hits.T.astype(float))


def _px(color: str) -> list[int]:
    return list(np.round(rgb(color) * 255).astype(int))


def test_roll_pixels_colour_each_hit_by_drum_and_shade_it_by_velocity(tmp_path):
    names = ["kick", "snare", "closed_hihat"]
    hits, velocity = np.zeros((32, 3), np.uint8), np.zeros((32, 3), np.uint8)
    for step, drum, vel in ((0, 0, 127), (2, 0, 20), (4, 1, 127), (8, 2, 127)):
        hits[step, drum], velocity[step, drum] = 1, vel
    img = grid_pixels(hits, names, 16, 4, velocity)
    w, h = cell_size(32, 3)
    assert img.shape == (3 * h + 1, 32 * w + 1, 3) and w >= 3

    def cell(step, drum):   # the middle pixel of a cell; the first drum is the bottom row
        return list(img[(2 - drum) * h + h // 2, step * w + w // 2].astype(int))

    assert cell(0, 0) == _px(drum_color("kick")) and cell(4, 1) == _px(drum_color("snare"))
    assert cell(8, 2) == _px(drum_color("closed_hihat"))
    assert cell(0, 2) == cell(1, 1) == [255, 255, 255]             # rests on beat 1: background
    assert cell(5, 0) == cell(6, 2) == _px(BAND)                   # rests on beat 2: the band
    assert sum(cell(2, 0)) > sum(cell(0, 0)) and cell(2, 0) != [255, 255, 255]   # soft: lighter, still there
    assert list(img[h // 2, 16 * w]) == _px(BAR_LINE) == list(img[h // 2, -1])   # bar 2 and the closing line
    assert list(img[h // 2, 3 * w]) == [255, 255, 255]             # the white line between steps
    flat = grid_pixels(hits, names, 16, 4, None)
    assert [int(v) for v in flat[2 * h + h // 2, 2 * w + w // 2]] == _px(drum_color("kick"))   # no velocities: solid

    picture = roll_picture(hits, names, 16, 4, velocity)
    left = picture.width - img.shape[1] - 4                       # drum names on the left, in their colours
    margin = np.asarray(picture)[:, :left].reshape(-1, 3).astype(int)
    assert np.abs(margin - _px(drum_color("snare"))).sum(1).min() < 40
    png = save_roll(tmp_path / "r" / "roll.png", hits, names, 16, 4, velocity)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(picture))
    assert sorted(p.name for p in png.parent.iterdir()) == ["roll.png"]          # no temp file left
    sheet = save_roll_sheet(tmp_path / "sheet.png", [hits, hits[:16]], names, 16, 4, [velocity, None], ["a", "b"])
    a, b = (np.asarray(roll_picture(r, names, 16, 4, v, t)) for r, v, t in ((hits, velocity, "a"), (hits[:16], None, "b")))
    got = np.asarray(Image.open(sheet))
    np.testing.assert_array_equal(got[:len(a)], a)
    np.testing.assert_array_equal(got[len(a):, :b.shape[1]], b)


def test_roll_columns_draw_every_roll_at_the_longest_ones_scale(tmp_path):
    """evaluate's real | generated columns: a 1-bar roll beside a 4-bar one keeps the 4-bar one's step width."""
    names = ["kick", "snare"]
    short, long = np.eye(16, 2, dtype=np.uint8), np.tile(np.eye(16, 2, dtype=np.uint8), (4, 1))
    got = np.asarray(Image.open(save_roll_columns(tmp_path / "c.png", [short], [long], names, 16, 4, ["a"], ["b"])))
    left = np.asarray(roll_picture(short, names, 16, 4, title="a", scale_steps=64))
    right = np.asarray(roll_picture(long, names, 16, 4, title="b"))
    assert left.shape[1] < np.asarray(roll_picture(short, names, 16, 4, title="a")).shape[1]   # narrower than its own scale
    assert got.shape[:2] == (max(len(left), len(right)), left.shape[1] + right.shape[1])
    np.testing.assert_array_equal(got[:len(left), :left.shape[1]], left)
    np.testing.assert_array_equal(got[:len(right), left.shape[1]:], right)


def test_real_excerpts_come_from_the_split_by_seed(tiny):
    store = Store(tiny[0])
    a, b = (pick_real(store, "validation", 3, 2 * SPB, SPB, seed=1) for _ in range(2))
    c = pick_real(store, "validation", 3, 2 * SPB, SPB, seed=2)
    assert [x.caption for x in a] == [x.caption for x in b] and len(a) == 3
    assert [x.caption for x in a] != [x.caption for x in c]
    names = set(store.meta["name"][store.songs_in_split("validation")])
    for ex in a:
        song, bar = re.match(r"(\S+), from bar (\d+)", ex.caption).groups()
        assert song in names and len(ex.hits) <= 2 * SPB
        i = list(store.meta["name"]).index(song)
        start = store.song_slice(i).start + (int(bar) - 1) * SPB
        np.testing.assert_array_equal(ex.hits, store.hits[start:start + len(ex.hits)])
        np.testing.assert_array_equal(ex.velocity, store.velocity[start:start + len(ex.hits)])   # as played
    assert OmegaConf.select(compose([], config_name="generate"), "generate.compare_split") == "validation"


def test_render_cli_bad_format_exits_2_with_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.report.render", f"paths.data_dir={tmp_path}",
                           "preview.format=mp3", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "preview.format='mp3'" in proc.stderr
