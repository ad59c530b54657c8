"""`python -m pipeline [overrides]`: the data stages in order (ingest, build, metrics, export), outside DVC.

The one command for the Groove MIDI Dataset:  python -m pipeline data=groove   (-> data/groove/)
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import common.config
from common.lock import LockHeld, data_dir_lock
from pipeline.stages import run_all


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # one lock for the four stages: nobody else writes (or reads half-replaced) data between them
    with common.config.exit_on("pipeline", LockHeld), data_dir_lock(cfg, "pipeline"):
        run_all(cfg, echo=print, cli=True)


if __name__ == "__main__":
    main()
