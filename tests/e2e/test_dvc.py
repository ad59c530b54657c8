"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
`dvc repro` for real, in a fresh copy of the repository with no remote: the first run goes from the
built-in corpus to generated MIDI, a second run is a no-op, and editing a config reruns exactly the
stages that read it..
The rest is tests/unit/test_dvc.py."""
import hashlib
import json
import re
import subprocess
import sys

import pytest

from pipeline.store import Store

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_dvc_repro_builds_then_is_a_no_op(fresh_clone):
    repo, env = fresh_clone
    dvc = [sys.executable, "-m", "dvc"]
    first = _run(dvc + ["repro"], repo, env)
    for stage in ("ingest", "build", "metrics", "export", "train", "evaluate", "generate", "render"):
        assert f"Running stage '{stage}'" in first
    store = Store(repo / "data" / "store.zarr")
    assert store.num_songs == 6 and store.attrs["num_steps"] > 0
    assert (repo / "data" / "ingest_report.json").exists()
    assert (repo / "runs" / "default" / "checkpoints" / "best.pt").exists()
    assert json.loads((repo / "data" / "eval" / "default" / "validation" / "metrics.json").read_text())
    assert any(p.suffix == ".mid" for p in (repo / "data" / "generated").iterdir())
    assert_pages_link_rendered_audio(repo)

    # the interim staging area is tracked but not cached: DVC keeps no second copy of the songs
    manifest_md5 = hashlib.md5((repo / "data" / "interim" / "manifest.json").read_bytes()).hexdigest()
    cached = {p.parent.name + p.name for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}
    assert manifest_md5 not in cached and len(cached) > 0

    second = _run(dvc + ["repro"], repo, env)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    assert "up to date" in _run(dvc + ["status"], repo, env)

    _config_edits_touch_only_the_stages_that_read_them(repo, env)

    # a store-layout edit reruns build only; the store keeps its songs with the new chunking
    cfg = repo / "conf" / "store" / "default.yaml"
    cfg.write_text(cfg.read_text().replace("chunk_steps: 65536", "chunk_steps: 512"))
    third = _run(dvc + ["repro", "build"], repo, env)
    assert "Running stage 'build'" in third and "Running stage 'ingest'" not in third
    assert Store(repo / "data" / "store.zarr").hits.chunks == (512, 9)


def _changed_stages(repo, env) -> set[str]:
    out = _run([sys.executable, "-m", "dvc", "status", "--json"], repo, env)
    return set(json.loads(out[out.index("{"):]))


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))
    return text


def _config_edits_touch_only_the_stages_that_read_them(repo, env):
    """Parallelism knobs rerun nothing; the window reruns metrics and what follows, not ingest/build."""
    root, store, metrics = (repo / "conf" / p for p in ("config.yaml", "store/default.yaml",
                                                          "metrics/default.yaml"))
    saved = {p: p.read_text() for p in (root, store, metrics)}
    _edit(root, "  workers: 2", "  workers: 1")
    _edit(root, "files_per_task: 64", "files_per_task: 7")
    _edit(store, "workers: 2", "workers: 1")
    _edit(metrics, "num_workers: null", "num_workers: 1")
    assert _changed_stages(repo, env) == set()
    _edit(root, "stride: 16", "stride: 32")
    assert _changed_stages(repo, env) == {"metrics", "export", "train", "evaluate", "generate"}
    root.write_text(saved[root])
    _edit(root, "max_steps: 65536", "max_steps: 60000")
    assert _changed_stages(repo, env) == {"ingest"}
    for p, text in saved.items():
        p.write_text(text)
    assert _changed_stages(repo, env) == set()
def assert_pages_link_rendered_audio(repo):
    """The pages, written before the `render` stage ran, link exactly the audio files it wrote (or,
    without FluidSynth here, say what to install and the stage leaves the audio folders empty)."""
    from common.config import compose
    from train.report.audio import find_synth

    synth, missing = find_synth(compose([]).preview)
    for page, audio in (("data/generated/index.html", "data/audio/generated"),
                        ("data/eval/default/validation/report.html", "data/audio/eval")):
        html = (repo / page).read_text()
        links = re.findall(r'<audio[^>]* src="([^"]+)"', html)
        rendered = sorted(p.resolve() for p in (repo / audio).iterdir())
        if synth is None:
            assert not links and not rendered and html.count(missing) == 1
            continue
        assert links, f"{page} has no audio player"
        assert sorted((repo / page).parent.joinpath(link).resolve() for link in links) == rendered
