"""A run's bookkeeping: what rank 0 writes beside the checkpoints, and the sums behind it.

TensorBoard scalars, `metrics.csv` (one row per epoch, for `dvc plots`), `metrics.json` (the run's
summary, for `dvc metrics`), `config.yaml` and `versions.json`; `EpochStats` accumulates the numbers
those rows and the progress line report. Kept out of trainer.py so the loop reads in one sitting.
"""
from __future__ import annotations

import contextlib
import csv
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CSV_FIELDS = ["epoch", "global_step", "train_loss", "val_loss", "lr", "samples_per_s", "data_wait_fraction"]


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "numpy", "numba", "zarr", "hydra-core", "omegaconf", "dask", "tensorboard"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class RunLog:
    """Rank 0's outputs: TensorBoard scalars, metrics.csv (DVC plots), metrics.json (DVC metrics)."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_epoch: int, extra_fields: list[str] = ()):
        self.enabled, self.run_dir = enabled, run_dir
        self.fields = CSV_FIELDS + list(extra_fields)   # e.g. the learned reward weights
        self.tb = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.csv_path = run_dir / "metrics.csv"
        rows = []
        if resumed_epoch > 0 and self.csv_path.exists():  # keep the epochs the checkpoint has seen
            with open(self.csv_path) as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resumed_epoch]
        with open(self.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def scalars(self, values: dict, step: int) -> None:
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def epoch_row(self, row: dict) -> None:
        if self.enabled:
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, self.fields).writerow({k: row.get(k, "") for k in self.fields})

    def summary(self, values: dict) -> None:
        if self.enabled:
            (self.run_dir / "metrics.json").write_text(json.dumps(values, indent=1))

    def close(self) -> None:
        if self.tb:
            self.tb.close()


@dataclass
class EpochStats:
    """Per-epoch sums for the epoch row and progress bar, and per-log-interval sums for TensorBoard."""
    loss_sum: float = 0.0
    loss_n: int = 0
    wait_sum: float = 0.0
    time_sum: float = 0.0
    samples: int = 0
    log_acc: dict = field(default_factory=dict)

    def add(self, step_logs: dict, wait: float, dt: float, samples: int) -> None:
        self.wait_sum, self.time_sum, self.samples = self.wait_sum + wait, self.time_sum + dt, self.samples + samples
        self.loss_sum, self.loss_n = self.loss_sum + step_logs["loss"], self.loss_n + 1
        for k, v in step_logs.items():
            self.log_acc[k] = self.log_acc.get(k, 0.0) + v

    def perf(self) -> dict:
        return {"samples_per_s": self.samples / max(self.time_sum, 1e-9),
                "data_wait_fraction": self.wait_sum / max(self.time_sum, 1e-9)}


def write_run_files(cfg: DictConfig, ckpt_dir: Path) -> None:
    """The composed config and package versions beside the checkpoints (rank 0 only)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (ckpt_dir / "versions.json").write_text(json.dumps(package_versions(), indent=1))
