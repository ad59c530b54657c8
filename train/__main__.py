"""`python -m train [overrides]`: one process; `torchrun --nproc_per_node=N -m train [overrides]`: DDP.

Examples:
    python -m train trainer.max_epochs=20 trainer.optimizer.config.lr=3e-4 model=transformer
    torchrun --nproc_per_node=2 -m train trainer.batch_size=16
    python -m train rl=surrogate rl.weight=0.5 rl.terms.density.target=1.2
"""
from __future__ import annotations


import hydra
from omegaconf import DictConfig

import pipeline.config
from train.training.optim import ConfigError


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from train.training.trainer import fit

    with pipeline.config.exit_on("train", ConfigError, code=2):
        fit(cfg)


if __name__ == "__main__":
    main()
