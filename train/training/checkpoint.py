"""Checkpoints: atomic writes, `weights_only` loads, RNG capture, best-k retention.

A checkpoint is a plain dict (tensors, numbers, str, lists, dicts) so that
`torch.load(path, weights_only=True)` accepts it. Keys (docs/architecture.md):
model, model_config, config, drum_names, drum_pitches, steps_per_quarter,
optimizer, scheduler, scaler, epoch, global_step, batch_in_epoch, sampler, rng, best.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_path

BEST_RE = re.compile(r"best_epoch_(\d+)_loss_(-?[0-9.]+|nan|inf)\.pt$")


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write `ckpt` to a temporary sibling, fsync it, then rename it onto `path`.

    A crash at any point leaves the previous file at `path` untouched and loadable.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # through a Python file: a full disk is OSError(ENOSPC), not torch's "unexpected pos" RuntimeError
            torch.save(ckpt, fh)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}; checkpoint {path} not written, the previous one is untouched",
                      str(path)) from None
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with `weights_only=True` (never executes pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message advises weights_only=False, which would run any code the file holds
        found = re.search(r"GLOBAL (\S+)|global (\S+)", str(e))
        what = f" (it references {next(g for g in found.groups() if g)})" if found else ""
        raise ValueError(f"{path}: not a loadable checkpoint: it holds Python objects beyond tensors and plain data{what}, which a safe "
                         "(weights-only) load refuses; it was not written by hierdrums, or is damaged. "
                         "Never load an untrusted file unsafely") from None
    except Exception as e:  # truncated, empty, not a torch file at all
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a loadable checkpoint: truncated or not a torch file "
                         f"({type(e).__name__}: {reason[:200]})") from None


def load_model(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the model a checkpoint holds: returns (model in eval mode, checkpoint dict)."""
    from train.model import HierarchicalDrumModel

    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or not {"model", "model_config"} <= ckpt.keys():
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a hierdrums model checkpoint (needs 'model' and 'model_config'; has {keys})")
    check_weights_fit(path, ckpt)   # before the model is built: its config may ask for gigabytes
    model = HierarchicalDrumModel.from_config(ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit its model_config ({e})") from e
    return model.to(map_location).eval(), ckpt


def check_weights_fit(path, ckpt: dict) -> None:
    """The stored tensors' names and shapes must be those `model_config` builds, compared on the
    meta device (no memory): a small file whose config asks for a huge hidden size is refused here,
    before the model is built. A config the model does not take (unknown or bad key) is one line too."""
    from train.model import HierarchicalDrumModel

    config = ckpt["model_config"]
    if not isinstance(config, dict) or not isinstance(ckpt["model"], dict):
        raise ValueError(f"{path}: 'model_config' and 'model' must be dicts")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in HierarchicalDrumModel.from_config(config).state_dict().items()}
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: its model_config does not build a model ({type(e).__name__}: {reason[:200]})") from None
    stored = {k: tuple(v.shape) for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    if len(stored) != len(ckpt["model"]):
        raise ValueError(f"{path}: 'model' holds values that are not tensors")
    wrong = [f"{k} {stored.get(k, 'missing')} vs {shapes.get(k, 'unexpected')}"
             for k in sorted(stored.keys() | shapes.keys()) if stored.get(k) != shapes.get(k)]
    if wrong:
        raise ValueError(f"{path}: weights do not fit its model_config ({len(wrong)} tensors differ, "
                         f"stored vs config, e.g. {'; '.join(wrong[:3])})")


DVC_TRAIN_HINT = "train first: `dvc repro train`"


def train_hint(cfg) -> str:
    """How to create the missing checkpoint with the data and run this command uses: its own
    overrides minus the inference-only ones (`python -m train data=groove ...`), else `dvc repro train`."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except ImportError:
        task = None
    if task is None:     # composed in code: name what selects the data and the run
        task = [f"paths.data_dir={cfg.paths.data_dir}", f"trainer.run_name={cfg.trainer.run_name}"]
    inference_only = ("checkpoint", "split", "evaluate", "generate", "hydra")
    keep = [o for o in task if o.lstrip("+~").split("=")[0].split(".")[0] not in inference_only]
    ckpt = Path(str(cfg.get("checkpoint") or ""))   # runs/NAME/checkpoints that is not this run's: train NAME
    if ckpt.name == "checkpoints" and ckpt != Path(str(cfg.trainer.checkpoint_dir)):
        keep = [o for o in keep if not o.startswith("trainer.run_name=")] + [f"trainer.run_name={ckpt.parent.name}"]
    return f"train first: `python -m train {' '.join(keep)}`" if keep else DVC_TRAIN_HINT


def resolve_checkpoint(path: str | Path, hint: str = DVC_TRAIN_HINT) -> Path:
    """A .pt file as is; a run directory -> its best.pt, else its best_epoch_*_loss_*.pt of lowest
    loss, else last.pt. `hint`: what the error for a missing path suggests."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        best = [(float(m.group(2).rstrip(".")), p) for p in path.glob("best_epoch_*_loss_*.pt")
                if (m := BEST_RE.search(p.name))]
        if best:
            return min(best)[1]
        if (path / "last.pt").is_file():
            return path / "last.pt"
        raise FileNotFoundError(f"{path}: no best.pt, best_epoch_*_loss_*.pt or last.pt checkpoint in this directory")
    raise FileNotFoundError(f"{path}: no such checkpoint file or run directory ({hint})")


def load_for_inference(path: str | Path, hint: str = DVC_TRAIN_HINT):
    """(model in eval mode, checkpoint dict, resolved path); weights_only loading (load_model)."""
    path = resolve_checkpoint(path, hint)
    model, ckpt = load_model(path)
    return model, ckpt, path


# --- RNG states, as tensors and lists only (weights_only-safe) ---------------------------------

def rng_state() -> dict:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [version, list(state), gauss],
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    version, st, gauss = state["python"]
    random.setstate((version, tuple(st), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- best-k retention --------------------------------------------------------------------------

def best_name(epoch: int, loss: float) -> str:
    return f"best_epoch_{epoch}_loss_{loss:.4f}.pt"


def rank_top_k(top: list, epoch: int, loss: float, k: int) -> tuple[list, bool, list[str]]:
    """Decide whether (epoch, loss) enters the best-k list, deleting nothing.

    `top` is a list of [loss, epoch, filename] sorted best first. Returns (new list, keep this one?,
    names of the files that dropped out: the caller deletes them once its new state is committed).
    k = -1 keeps all, k = 0 none.
    """
    if k == 0 or not np.isfinite(loss):
        return top, False, []
    entry = [float(loss), int(epoch), best_name(epoch, loss)]
    new = sorted(top + [entry], key=lambda e: (e[0], e[1]))
    dropped = []
    if k > 0:
        new, dropped = new[:k], new[k:]
    return new, entry in new, [name for _, _, name in dropped if name != entry[2]]
