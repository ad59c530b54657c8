"""`python -m train.generate checkpoint=… [overrides]`: drum MIDI, NPZ and piano rolls from a checkpoint.

Per sample `generate.out_dir/sample_NNN.{mid,npz,png}` and one `sheet.png` of all samples:
- MIDI: drum channel (10), each class at its canonical General MIDI pitch (the checkpoint's
  `drum_pitches`), every hit at `generate.velocity` (the model predicts hits, not velocities);
- NPZ: key `sequence` [T, D] uint8 holding the velocity of each hit (0 = rest), the input format
  `pipeline.ingest` reads;
- PNG: drums x steps with bar lines and drum names.
A prime (`generate.prime=groove.mid` or `.npz`) keeps its first `generate.prime_bars` bars and the
model continues them; the outputs hold the prime followed by the continuation.
Config: `conf/generate.yaml` (its own config_name, including the root config).
"""
from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

import pipeline.config
from pipeline.atomic import atomic_path
from pipeline.drums import DrumMap
from train.training.checkpoint import load_for_inference



def checkpoint_drum_map(ckpt: dict, cfg_drums) -> DrumMap:
    """The configured drum map when it names the checkpoint's drums, else one built from the checkpoint."""
    names = [str(n) for n in ckpt["drum_names"]]
    pitches = [int(p) for p in ckpt["drum_pitches"]]
    configured = DrumMap.from_config(cfg_drums)
    if list(configured.names) == names and list(configured.pitches) == pitches:
        return configured
    return DrumMap(tuple(names), tuple(pitches), {p: i for i, p in enumerate(pitches)})


def load_prime(path: str | Path, drum_map: DrumMap, steps_per_quarter: int) -> tuple[np.ndarray, float | None]:
    """Hits [T, D] (uint8 0/1) and the tempo (MIDI only) of a prime file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prime file not found")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "sequence" not in npz:
                    raise ValueError(f"{path}: no `sequence` array in this NPZ")
                seq = np.asarray(npz["sequence"])
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable NPZ prime ({err})") from err
        if seq.ndim != 2 or seq.shape[1] != drum_map.num_drums:
            raise ValueError(f"{path}: `sequence` has shape {seq.shape}, expected [steps, {drum_map.num_drums}]")
        if not np.isfinite(seq).all():
            raise ValueError(f"{path}: `sequence` holds NaN or inf")
        return (seq > 0).astype(np.uint8), None
    if suffix in (".mid", ".midi"):
        from pipeline.midi import read_midi

        roll = read_midi(path, drum_map, steps_per_quarter)
        bpm = getattr(roll, "bpm", None)
        return (np.asarray(roll.hits) > 0).astype(np.uint8), (float(bpm) if bpm else None)
    raise ValueError(f"{path}: a prime must be a .mid/.midi or .npz file")


@torch.no_grad()
def sample(model, num_samples: int, length: int, *, num_drums: int, prime: np.ndarray | None = None,
           temperature: float = 1.0, top_p: float | None = None, seed: int = 0,
           batch_size: int = 64, top_k: int | None = None) -> np.ndarray:
    """[num_samples, T0 + length, D] uint8: the prime (or nothing) followed by `length` sampled steps.

    Batches of `batch_size` use seeds seed, seed + 1, …, so a run is reproducible for a seed.
    """
    t0 = 0 if prime is None else len(prime)
    out = []
    for b, first in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - first)
        start = torch.zeros(n, t0, num_drums)
        if t0:
            start[:] = torch.as_tensor(prime, dtype=torch.float32)
        seq = model.generate(start, length, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed + b)
        out.append((seq.detach().cpu().numpy() > 0).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, t0 + length, num_drums), np.uint8)


def save_npz(path: Path, sequence: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, sequence=sequence)


def save_midi(path: Path, hits: np.ndarray, velocity: np.ndarray, *, drum_map: DrumMap, bpm: float,
              steps_per_quarter: int, beats_per_bar: int) -> None:
    from pipeline.midi import write_midi

    with atomic_path(path) as tmp:
        write_midi(tmp, hits, velocity, drum_map=drum_map, bpm=bpm, steps_per_quarter=steps_per_quarter,
                   beats_per_bar=beats_per_bar)


def run(cfg: DictConfig) -> dict:
    """Generate and write every output; returns where they are (and what was generated)."""
    from train.evaluate.plots import save_piano_roll, save_sheet

    g = cfg.generate
    model, ckpt, ckpt_path = load_for_inference(cfg.checkpoint)
    drum_map = checkpoint_drum_map(ckpt, cfg.drums)
    spb = int(model.config.get("steps_per_bar", cfg.window.steps_per_bar))  # the grid it was trained on
    spq = int(ckpt.get("steps_per_quarter", 4))
    if spb % spq:
        raise ValueError(f"window.steps_per_bar={spb} is not a whole number of beats of {spq} steps")
    length = int(g.steps) if g.steps is not None else int(g.bars) * spb
    if length < 1 or int(g.num_samples) < 1:
        raise ValueError(f"generate: need num_samples >= 1 and a length >= 1 step, got "
                         f"num_samples={g.num_samples}, length={length}")
    prime, prime_bpm = None, None
    if g.prime:
        prime, prime_bpm = load_prime(g.prime, drum_map, spq)
        prime = prime[: int(g.prime_bars) * spb]
    bpm = float(g.bpm or prime_bpm or 120.0)
    rolls = sample(model, int(g.num_samples), length, num_drums=drum_map.num_drums, prime=prime,
                   temperature=float(g.temperature), top_p=g.top_p, top_k=g.get("top_k"), seed=int(g.seed))

    out_dir = Path(g.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(drum_map.names)
    files = {"midi": [], "npz": [], "png": []}
    for i, hits in enumerate(rolls):
        velocity = hits * np.uint8(int(g.velocity))
        stem = out_dir / f"sample_{i:03d}"
        save_midi(stem.with_suffix(".mid"), hits, velocity, drum_map=drum_map, bpm=bpm,
                  steps_per_quarter=spq, beats_per_bar=spb // spq)
        save_npz(stem.with_suffix(".npz"), velocity)
        save_piano_roll(stem.with_suffix(".png"), hits, names, spb, title=f"sample {i}", velocity=velocity)
        for kind, suffix in (("midi", ".mid"), ("npz", ".npz"), ("png", ".png")):
            files[kind].append(stem.with_suffix(suffix))
    sheet = save_sheet(out_dir / "sheet.png", list(rolls), names, spb,
                       titles=[f"sample {i}" for i in range(len(rolls))])
    return {"checkpoint": ckpt_path, "rolls": rolls, "files": files, "sheet": sheet, "bpm": bpm,
            "prime_steps": 0 if prime is None else len(prime), "length": length}


def summary(result: dict, report: str | None) -> str:
    """The closing lines: where the MIDI files, pictures and report are."""
    files = result["files"]
    out_dir = files["midi"][0].parent
    n = len(files["midi"])
    prime = f" after a {result['prime_steps']}-step prime" if result["prime_steps"] else ""
    lines = [f"Generated {n} drum sample(s) of {result['length']} steps{prime} at {result['bpm']:g} bpm "
             f"from {result['checkpoint']}",
             f"  MIDI files: {out_dir}/sample_*.mid ({n} files, e.g. {files['midi'][0]})",
             f"  NPZ rolls:  {out_dir}/sample_*.npz (key `sequence`)",
             f"  Pictures:   {out_dir}/sample_*.png and {result['sheet']} (all samples)"]
    if report:
        where = report if Path(report).is_file() else f"{report} (not there yet: run `python -m train.evaluate`)"
        lines.append(f"  Report:     {where}")
    return "\n".join(lines)


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("generate", FileNotFoundError, ValueError, KeyError):
        result = run(cfg)
    print(summary(result, cfg.generate.get("report")))
