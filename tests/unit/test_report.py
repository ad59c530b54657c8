"""The HTML pages (train/report): a tiny run's pages opened in headless Chromium, the fallback
without FluidSynth, the audio cache, the dvc render stage's naming, velocity shading, real excerpts.

Needs the Debian packages fluidsynth, fluid-soundfont-gm and chromium (.ci/run installs them).
"""

import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from common.config import compose
from pipeline.store import Store
from tests.tiny_checkpoint import OVERRIDES, SPB, make_checkpoint, make_ready
from train.report.audio import find_synth
from train.report.pages import pick_real
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

def test_preview_false_writes_the_page_without_audio(tiny, tmp_path):
    result = _generate(tiny, tmp_path / "gen", "generate.num_samples=2", "generate.preview=false")
    html = result["page"].read_text()
    assert "<audio" not in html and "Audio previews are off" in html
    assert html.count('class="clip generated"') == 2
    assert not (tmp_path / "gen" / "preview" / "audio").exists()

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
