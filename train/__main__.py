"""`python -m train [overrides]`: one process; `torchrun --nproc_per_node=N -m train [overrides]`: DDP.

Examples:
    python -m train trainer.max_epochs=20 trainer.optimizer.config.lr=3e-4 model=transformer
    torchrun --nproc_per_node=2 -m train trainer.batch_size=16
    python -m train rl=surrogate rl.weight=0.5 rl.terms.density.target=1.2
"""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

import common.config
from common.lock import LockHeld
from common.config import ConfigError
from train.training.preemption import exit_on_preempted


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from train.training.trainer import fit

    with common.config.exit_on("train", ConfigError, code=2), common.config.exit_on("train", LockHeld, OSError), \
            exit_on_preempted():
        summary = fit(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(where_it_is(cfg, summary), flush=True)


def where_it_is(cfg: DictConfig, summary: dict) -> str:
    """The closing lines: where the checkpoints and logs are, and what to run next."""
    tc = cfg.trainer
    best = summary.get("best_val_loss")
    return "\n".join([
        f"checkpoints: {tc.checkpoint_dir}/ (best.pt, last.pt"
        + (f"; best val loss {best:.4f} at epoch {summary.get('best_epoch')})" if best is not None else ")"),
        f"logs: {tc.run_dir}/ (metrics.csv, metrics.json, TensorBoard: tensorboard --logdir {tc.run_dir})",
        f"next: python -m train.evaluate {' '.join(_run_overrides(cfg))}".rstrip(),
    ])


def _run_overrides(cfg: DictConfig) -> list[str]:
    """The overrides of this command that evaluate needs to find the same data and run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return [f"paths.data_dir={cfg.paths.data_dir}", f"trainer.run_name={cfg.trainer.run_name}"]
    keys = ("data", "paths", "window", "experiment", "trainer.run_name", "trainer.run_dir",
            "trainer.checkpoint_dir", "drums")
    return [o for o in task if o.lstrip("+~").split("=")[0].startswith(keys)]


if __name__ == "__main__":
    main()
