"""`python -m train.humanize checkpoint=… input=part.mid output=human.mid`: a performance of a part.

Keeps the input's hits and gives each the velocity and timing offset the model's expressive heads
predict for it, step by step from the start (the heads see the hits so far and the step's own
hits and, with `expressive_history`, how it played the steps before). A quantised, fixed-velocity
part comes out played; the tempo and meter are the input's.
Config: `conf/humanize.yaml` (its own config_name, including the root config).
"""
from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

import common.config
from pipeline.midi import read_midi, write_midi
from train.generate.run import checkpoint_drum_map
from train.training.checkpoint import load_for_inference
from train.model.expressive import to_midi_values


@torch.no_grad()
def humanize_roll(model, hits: np.ndarray, steps_per_bar: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(velocity / 127, offset in steps) [T, D] for the hits [T, D] of one part, read on bars of
    `steps_per_bar` steps (its meter; default the model's)."""
    if not model.config.get("expressive"):
        raise ValueError("the checkpoint's model has no expressive heads (train it with model.expressive=true)")
    model.eval()
    x = torch.as_tensor(np.asarray(hits) > 0, dtype=torch.float32)[None]
    state = model.init_state(1, t=-1, steps_per_bar=steps_per_bar)   # a silent lead-in step, as generation starts
    model.step(torch.zeros(1, x.shape[-1]), state)
    vel, off = torch.zeros_like(x[0]), torch.zeros_like(x[0])
    for t in range(x.shape[1]):
        v, o = model.play(state, x[:, t])
        vel[t], off[t] = v[0], o[0]
        if t + 1 < x.shape[1]:
            model.step(x[:, t], state, played=(v, o))
    return vel.numpy(), off.numpy()


def run(cfg: DictConfig) -> dict:
    """Read `input`, predict its performance, write `output`; returns what was written."""
    for key in ("input", "output"):
        if not cfg.get(key):
            raise ValueError(f"set {key}=...: python -m train.humanize input=part.mid output=human.mid")
    model, ckpt, ckpt_path = load_for_inference(cfg.checkpoint)
    drum_map = checkpoint_drum_map(ckpt, cfg.drums)
    spq = int(ckpt.get("steps_per_quarter", 4))
    path = Path(cfg.input)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input MIDI not found")
    roll = read_midi(path, drum_map, spq)
    spb = int(roll.steps_per_bar)                  # the part's meter, read on its own bar
    try:
        model.bar_length(spb)
    except ValueError as err:
        raise ValueError(f"{path}: {spb} steps a bar: {err}") from err
    velocity, offset = to_midi_values(roll.hits, *humanize_roll(model, roll.hits, spb))
    write_midi(cfg.output, roll.hits, velocity, drum_map=drum_map, bpm=roll.bpm, steps_per_quarter=spq,
               beats_per_bar=roll.beats_per_bar, beat_unit=spq * 4 * roll.beats_per_bar // spb, offset=offset)
    return {"checkpoint": ckpt_path, "output": Path(cfg.output), "hits": roll.hits, "velocity": velocity,
            "offset": offset}


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="humanize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("humanize", FileNotFoundError, ValueError, KeyError):
        result = run(cfg)
    print(f"Humanized {int(result['hits'].sum())} hits with {result['checkpoint']} -> {result['output']}")


if __name__ == "__main__":
    main()
