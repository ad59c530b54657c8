"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The HTML pages (train/report): a tiny run's pages opened in headless Chromium, the fallback.
The rest is tests/unit/test_report.py."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.config import REPO_ROOT, compose
from pipeline.drums import DrumMap
from pipeline.midi import write_midi
from tests.browser import chromium, open_page
from tests.tiny_checkpoint import OVERRIDES
from train.report.audio import audio_name, render_all
from train.report.render import render_folders

from tests.unit.test_report import MISSING, SYNTH, _generate, tiny  # noqa: F401 (fixtures and helpers shared with the unit tests)


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


def test_render_cli_bad_format_exits_2_with_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.report.render", f"paths.data_dir={tmp_path}",
                           "preview.format=mp3", f"hydra.run.dir={tmp_path}/hydra"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "preview.format='mp3'" in proc.stderr
