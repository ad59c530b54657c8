"""The data stages in order, as one call: the single entry point that runs the pipeline in code.

`run_all(cfg)` is what `python -m pipeline` and `dvc repro` (stage by stage) do.

`prepare_npz(npz_dir, window...)` is the boundary with train/: the only function of the pipeline
that training code calls (`train.training.loader.window_loader`, alias `get_complete_rl_dataloader`,
given an NPZ folder). It answers with an export folder (data/ready layout), built here through the
stages and cached; train/ never composes a stage config or runs a stage itself, and the DVC train
stage (which reads data/ready) does not depend on the ingest or its sources.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from pipeline.build import build
import common.config
from common.config import compose
from pipeline.export import FORMAT_VERSION, export_from_config
from pipeline.ingest import IngestError, ingest
from pipeline.metrics import run as compute_metrics
from common.progress import heartbeat

log = logging.getLogger(__name__)


def run_all(cfg: DictConfig, echo=lambda line: None, cli: bool = False) -> dict:
    """ingest -> build -> metrics -> export with `cfg`; `echo` gets one summary line per stage.

    `cli=True` turns each stage's expected failures into one `stage: reason` line and an exit code
    (`common.config.exit_on`); in code they propagate as exceptions.
    """
    exit_on = common.config.exit_on if cli else (lambda *a, **k: contextlib.nullcontext())
    with exit_on("ingest", IngestError, OSError, ValueError), heartbeat("ingest"):   # ValueError: OutputRefused
        report = ingest(cfg)
    with exit_on("build", OSError, ValueError), heartbeat("build"):
        summary = build(cfg)
    echo(f"{summary['songs']} songs, {summary['steps']} steps, {summary['hits']} hits, "
         f"{report['notes_mapped']} notes mapped, dropped per unmapped pitch {report['notes_dropped']}, "
         f"{report['skipped_count']} files skipped -> {summary['store']}")
    with exit_on("metrics", OSError, ValueError), heartbeat("metrics"):
        metrics = compute_metrics(cfg)
    echo(f"{metrics['windows']} windows of {metrics['songs']} songs, "
         f"{len(metrics['errors'])} songs skipped -> {metrics['path']}")
    with exit_on("export", OSError, ValueError), heartbeat("export"):
        export_from_config(cfg)
    echo(f"training arrays -> {cfg.paths.ready}")
    return {"ingest": report, "build": summary, "metrics": metrics, "ready": str(cfg.paths.ready)}


def _npz_cache_key(npz_dir: Path, **window) -> str:
    files = sorted(npz_dir.rglob("*.npz"))
    listing = [(str(p.relative_to(npz_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps({"files": listing, **window, "export_format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_npz(npz_dir: str | Path, *, seq_len: int, stride: int, steps_per_bar: int, bars_per_phrase: int,
                cache_dir: str | Path | None = None) -> Path:
    """NPZ folder -> store -> metrics -> export through the pipeline stages; cached by content.
    Returns the export folder (what `CompleteHierarchicalDrumDataset` reads). No *.npz under
    `npz_dir` is a FileNotFoundError.

    The cache key covers every *.npz (path, size, mtime) and the window, so editing a file or the
    window rebuilds, and anything else reuses `<cache_dir>/<key>/ready` (default
    $HIERDRUMS_CACHE or ~/.cache/hierdrums). A file lock makes concurrent ranks build it once.
    """
    npz_dir = Path(npz_dir)
    if not any(npz_dir.rglob("*.npz")):
        raise FileNotFoundError(f"{npz_dir}: no *.npz files, no store.zarr and no export (manifest.json)")
    window = {"seq_len": int(seq_len), "stride": int(stride), "steps_per_bar": int(steps_per_bar),
              "bars_per_phrase": int(bars_per_phrase)}
    cache_dir = Path(cache_dir or os.environ.get("HIERDRUMS_CACHE", "~/.cache/hierdrums")).expanduser()
    root = cache_dir / _npz_cache_key(npz_dir, **window)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "ready" / "manifest.json").exists():
            _run_stages(npz_dir, root, window)
    return root / "ready"


def _run_stages(npz_dir: Path, root: Path, window: dict) -> None:
    cfg = compose(["data=npz", f"data.path='{npz_dir.resolve()}'", f"data.steps_per_bar={window['steps_per_bar']}",
                   f"paths.data_dir='{root.resolve()}'", *(f"window.{k}={v}" for k, v in window.items())])
    log.info("building %s from %s (store, metrics, export)", root, npz_dir)
    run_all(cfg)
