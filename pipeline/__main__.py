"""`python -m pipeline [overrides]`: the data stages in order (ingest, build, metrics, export), outside DVC.

The one command for the Groove MIDI Dataset:  python -m pipeline data=groove   (-> data/groove/)
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import pipeline.config
from pipeline.build import build
from pipeline.export import export
from pipeline.ingest import IngestError, ingest
from pipeline.metrics import run as compute_metrics


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("ingest", IngestError):
        report = ingest(cfg)
    with pipeline.config.exit_on("build", FileNotFoundError):
        summary = build(cfg)
    print(f"{summary['songs']} songs, {summary['steps']} steps, {summary['hits']} hits, "
          f"{report['notes_mapped']} notes mapped, dropped per unmapped pitch {report['notes_dropped']}, "
          f"{report['skipped_count']} files skipped -> {summary['store']}")
    with pipeline.config.exit_on("metrics", FileNotFoundError, ValueError):
        metrics = compute_metrics(cfg)
    print(f"{metrics['windows']} windows of {metrics['songs']} songs, "
          f"{len(metrics['errors'])} songs skipped -> {metrics['path']}")
    with pipeline.config.exit_on("export", FileNotFoundError, ValueError):
        export(cfg.paths.store, cfg.paths.metrics, cfg.paths.ready, seq_len=int(cfg.window.seq_len),
               stride=int(cfg.window.stride), metric_names=list(cfg.export.metrics),
               scheduler=cfg.export.scheduler, workers=cfg.export.workers)
    print(f"training arrays -> {cfg.paths.ready}")


if __name__ == "__main__":
    main()
