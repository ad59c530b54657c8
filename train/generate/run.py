"""`python -m train.generate checkpoint=… [overrides]`: drum MIDI, NPZ and piano rolls from a checkpoint.

Per sample `generate.out_dir/sample_NNN.{mid,npz}`, one `sheet.png` of all samples and `index.html`
(every sample's roll and audio, `preview/`); `sample_NNN.png` too with `generate.sample_pictures=true`:
- MIDI: drum channel (10), each class at its canonical General MIDI pitch (the checkpoint's
  `drum_pitches`); by default each generated hit with the velocity and timing offset the model's
  expressive heads give it (`generate.expressive=false`, or a model without them: every hit at
  `generate.velocity` on the grid; the prime's hits always are);
- NPZ: key `sequence` [T, D] uint8 holding the velocity of each hit (0 = rest), plus `velocity` and
  `offset` (int8, 1/128 step): the input format `pipeline.ingest` reads;
- PNG: drums x steps with bar lines and drum names, coloured by drum family and shaded by velocity
  (train/report/rolls.py: numpy + Pillow; generate never imports matplotlib; `generate.plots=false`:
  no pictures and no page).
A prime (`generate.prime=groove.mid` or `.npz`) keeps its first `generate.prime_bars` bars and the
model continues them; the outputs hold the prime followed by the continuation.
A conditioned model (`model.conditioning`) generates in the style, beat/fill and tempo asked for:
`generate.style=funk generate.beat_type=beat generate.bpm=100` (null = none, unconditional); a
label the model was not trained with exits 2 listing the ones it knows.
The meter: `generate.time_signature` ("6/8"), else `generate.steps_per_bar` (12 -> 3/4), else a MIDI
prime's, else the model's bar; the model generates on that bar and the MIDI file says it.
model continues them; the outputs hold the prime followed by the continuation. Expressive output
keeps the prime as it was played (its velocities and offsets: the MIDI's, or the NPZ's
`velocity`/`offset` or velocity-valued `sequence`; a 0/1 NPZ at `generate.velocity` on the grid),
and the model's expressive history reads them, so the continuation carries the prime's dynamics.
Config: `conf/generate.yaml` (its own config_name, including the root config).
"""
from __future__ import annotations

import logging
import time
from typing import NamedTuple
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

import common.config
from common.atomic import atomic_path
from pipeline.drums import DrumMap
from train.model import guidance_of, played_values, sample, torch_threads
from train.training.checkpoint import load_for_inference, train_hint
from common.config import ConfigError

log = logging.getLogger(__name__)


class Prime(NamedTuple):
    """A prime file: hits [T, D] uint8 0/1, how they were played (velocity uint8 MIDI, offset int8
    1/128 step; velocity None for a hits-only 0/1 NPZ) and the tempo (MIDI only)."""
    hits: np.ndarray
    velocity: np.ndarray | None
    offset: np.ndarray
    bpm: float | None


def checkpoint_drum_map(ckpt: dict, cfg_drums) -> DrumMap:
    """The configured drum map when it names the checkpoint's drums, else one built from the checkpoint."""
    names = [str(n) for n in ckpt["drum_names"]]
    pitches = [int(p) for p in ckpt["drum_pitches"]]
    configured = DrumMap.from_config(cfg_drums)
    if list(configured.names) == names and list(configured.pitches) == pitches:
        return configured
    return DrumMap(tuple(names), tuple(pitches), {p: i for i, p in enumerate(pitches)})


def read_prime(path: str | Path, drum_map: DrumMap, steps_per_quarter: int,
               steps_per_bar: int | None = None) -> Prime:
    """The hits, velocities, offsets and tempo of a prime file. A MIDI prime whose time signature
    gives bars of another length than `steps_per_bar` (the model's) is an error: the model would
    read it re-barred, its beats in the wrong places."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prime file not found")
    if suffix == ".npz":
        from pipeline.sources import npz as npz_source

        try:    # the ingest's NPZ reader: one open, the same checks (no length limit for a prime)
            roll = npz_source.read_file(path, max_steps=np.iinfo(np.int64).max)
        except ValueError as err:
            raise ValueError(f"{path}: not a readable NPZ prime ({err})") from err
        seq = roll.sequence
        if seq.ndim != 2 or seq.shape[1] != drum_map.num_drums:
            raise ValueError(f"{path}: `sequence` has shape {seq.shape}, expected [steps, {drum_map.num_drums}]")
        if not np.isfinite(seq).all():
            raise ValueError(f"{path}: `sequence` holds NaN or inf")
        return _npz_played(path, roll, steps_per_bar)
    if suffix in (".mid", ".midi"):
        from pipeline.sources import midi as midi_source

        roll = midi_source.read_file(path, drum_map, steps_per_quarter)
        if steps_per_bar is not None and int(roll.steps_per_bar) != int(steps_per_bar):
            raise ValueError(f"{path}: the prime is in {roll.beats_per_bar}-beat bars of {roll.steps_per_bar} "
                             f"steps, the model was trained on bars of {steps_per_bar} steps; use a prime "
                             "in the model's meter (or an NPZ prime, read as the model's bars)")
        bpm = getattr(roll, "bpm", None)
        hits = (np.asarray(roll.hits) > 0).astype(np.uint8)
        offset = np.zeros(hits.shape, np.int8) if roll.offset is None else np.asarray(roll.offset, np.int8)
        return Prime(hits, np.asarray(roll.velocity, np.uint8), offset, float(bpm) if bpm else None)
    raise ValueError(f"{path}: a prime must be a .mid/.midi or .npz file")


def meter_of(steps_per_bar: int, steps_per_quarter: int) -> tuple[int, int, int]:
    """(steps_per_bar, beats_per_bar, beat_unit) of a bar: quarter beats where they fit (12 -> 3/4,
    20 -> 5/4), else eighths (14 -> 7/8) or sixteenths."""
    for unit in (4, 8, 16):
        if steps_per_bar > 0 and (steps_per_bar * unit) % (4 * steps_per_quarter) == 0:
            return steps_per_bar, steps_per_bar * unit // (4 * steps_per_quarter), unit
    raise ValueError(f"a bar of {steps_per_bar} steps at {steps_per_quarter} steps a quarter has no time "
                     "signature in quarters, eighths or sixteenths")


def generation_meter(g: DictConfig, model_bar: int, steps_per_quarter: int,
                     prime_meter: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """(steps_per_bar, beats_per_bar, beat_unit) to generate in and write into the MIDI files:
    generate.time_signature ("6/8"), else generate.steps_per_bar, else a MIDI prime's meter, else
    the model's bar (its training grid)."""
    from pipeline.midi import MidiError, steps_per_bar_for

    sig, bar = g.get("time_signature"), g.get("steps_per_bar")
    if sig:
        num, _, den = str(sig).partition("/")
        if not (num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0):
            raise ValueError(f"generate.time_signature={sig!r}: expected beats/unit, e.g. '3/4' or '6/8'")
        try:
            spb = steps_per_bar_for(int(num), int(den), steps_per_quarter, "generate.time_signature")
        except MidiError as err:
            raise ValueError(str(err)) from err
        if bar is not None and int(bar) != spb:
            raise ValueError(f"generate.time_signature={sig} is a bar of {spb} steps, but "
                             f"generate.steps_per_bar={bar}; set one of them")
        return spb, int(num), int(den)
    if bar is not None:
        return meter_of(int(bar), steps_per_quarter)
    return prime_meter or meter_of(int(model_bar), steps_per_quarter)


def prime_meter(path: str | Path, drum_map: DrumMap, steps_per_quarter: int) -> tuple[int, int, int] | None:
    """(steps_per_bar, beats_per_bar, beat_unit) of a MIDI prime's time signature; None for an NPZ."""
    if Path(path).suffix.lower() not in (".mid", ".midi") or not Path(path).is_file():
        return None
    from pipeline.midi import read_midi

    roll = read_midi(path, drum_map, steps_per_quarter)
    unit = steps_per_quarter * 4 * int(roll.beats_per_bar) // int(roll.steps_per_bar)
    return int(roll.steps_per_bar), int(roll.beats_per_bar), unit
def _npz_played(path: Path, roll, steps_per_bar: int | None) -> Prime:
    """An NPZ prime's arrays (`pipeline.sources.npz.read_file`) made a song as the ingest makes one
    (velocity from `sequence` or a `velocity` array, `offset`, each checked with a message naming
    the file); a 0/1 sequence with no `velocity` array is hits only (velocity None)."""
    from pipeline.sources.npz import load_npz

    seq = roll.sequence
    hits = (seq > 0).astype(np.uint8)
    hits_only = "velocity" not in roll.extra and bool(np.isin(seq, (0, 1)).all())
    song = load_npz(path, path.name, steps_per_bar=int(steps_per_bar or 16), bpm=120.0, max_steps=len(seq) + 1,
                    roll=roll)
    return Prime(hits, None if hits_only else np.asarray(song.velocity, np.uint8),
                 np.asarray(song.offset, np.int8), None)


def condition_ids(model, g) -> list[int] | None:
    """The ids of `generate.style` / `beat_type` / `bpm` for a conditioned model (None for an
    unconditioned one). A label the model does not know, or a style/beat type asked of a model
    trained without that condition, is a ConfigError naming the known ones. `generate.bpm` is
    also the MIDI tempo, so an unconditioned model just plays at it."""
    from train.model.conditioning import request_ids

    vocab = model.config.get("conditioning") or {}
    asked = {name: g.get(name) for name in ("style", "beat_type", "bpm")}
    lacking = [n for n in ("style", "beat_type") if asked[n] is not None and n not in vocab]
    if lacking:
        raise ConfigError(f"generate.{lacking[0]}={asked[lacking[0]]!r}: this checkpoint was trained "
                          f"without {lacking[0]} conditioning (its conditions: {sorted(vocab) or 'none'}; "
                          "train with model.conditioning=[style,beat_type,bpm])")
    if not vocab:
        return None
    try:
        return request_ids(vocab, model.config.get("bpm_buckets", ()), asked)
    except ValueError as e:
        raise ConfigError(f"generate.{e}") from None


def save_npz(path: Path, sequence: np.ndarray, offset: np.ndarray | None = None) -> None:
    extra = {} if offset is None else {"velocity": sequence, "offset": offset}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, sequence=sequence, **extra)


def save_midi(path: Path, hits: np.ndarray, velocity: np.ndarray, *, drum_map: DrumMap, bpm: float,
              steps_per_quarter: int, beats_per_bar: int, offset: np.ndarray | None = None,
              beat_unit: int = 4) -> None:
    from pipeline.midi import write_midi

    with atomic_path(path) as tmp:
        write_midi(tmp, hits, velocity, drum_map=drum_map, bpm=bpm, steps_per_quarter=steps_per_quarter,
                   beats_per_bar=beats_per_bar, offset=offset, beat_unit=beat_unit)


def run(cfg: DictConfig) -> dict:
    """Generate and write every output; returns where they are, what was generated, and the seconds
    each phase took (`timings`: load, sample, write, plots, page: the page's rolls and audio).
    `generate.plots=false` skips every picture and the HTML page (train/report)."""
    g = cfg.generate
    clock = [time.perf_counter()]
    timings = {}

    def lap(name):
        clock.append(time.perf_counter())
        timings[f"{name}_s"] = round(clock[-1] - clock[-2], 4)
    model, ckpt, ckpt_path = load_for_inference(cfg.checkpoint, train_hint(cfg))
    drum_map = checkpoint_drum_map(ckpt, cfg.drums)
    spq = int(ckpt.get("steps_per_quarter", 4))
    model_bar = int(model.config.get("steps_per_bar", cfg.window.steps_per_bar))  # the grid it was trained on
    spb, beats, unit = generation_meter(g, model_bar, spq, prime_meter(g.prime, drum_map, spq) if g.prime else None)
    try:
        model.bar_length(spb)
    except ValueError as err:
        raise ValueError(f"generate: a {beats}/{unit} bar ({spb} steps) with {ckpt_path}: {err}") from err
    trained = [int(b) for b in ckpt.get("bar_lengths", [])]     # the meters of its training data
    if trained and spb not in trained:
        log.warning("%s was trained on bars of %s steps, not %d: its %d/%d reuses positions learnt in other "
                    "meters", ckpt_path, trained, spb, beats, unit)
    length = int(g.steps) if g.steps is not None else int(g.bars) * spb
    if length < 1 or int(g.num_samples) < 1:
        raise ValueError(f"generate: need num_samples >= 1 and a length >= 1 step, got "
                         f"num_samples={g.num_samples}, length={length}")
    prime, prime_bpm, prime_played = None, None, None
    if g.prime:
        read = read_prime(g.prime, drum_map, spq, spb)
        keep = int(g.prime_bars) * spb
        prime, prime_bpm = read.hits[:keep], read.bpm
        vel = read.hits * np.uint8(g.velocity) if read.velocity is None else read.velocity
        prime_played = (vel[:keep], read.offset[:keep])         # MIDI units, as played_values writes them
    bpm = float(g.bpm or prime_bpm or 120.0)
    expressive = bool(g.expressive) and bool(model.config.get("expressive", False))
    if g.expressive and not expressive:
        log.warning("%s has no expressive heads: every hit at generate.velocity=%s on the grid",
                    ckpt_path, g.velocity)
    cond = condition_ids(model, g)
    lap("load")
    with torch_threads(int(g.get("num_threads", 0))) as threads:
        drawn = sample(model, int(g.num_samples), length, num_drums=drum_map.num_drums, prime=prime,
                       temperature=float(g.temperature), top_p=g.top_p, top_k=g.get("top_k"), seed=int(g.seed),
                       expressive=expressive, cond=cond, steps_per_bar=spb,
                       expressive_temperature=float(g.get("expressive_temperature", 1.0)),
                       guidance=guidance_of(g, cond),
                       prime_played=None if prime_played is None else
                       (prime_played[0] / 127.0, prime_played[1] / 128.0))
    rolls, vels, offs = drawn if expressive else (drawn, [None] * len(drawn), [None] * len(drawn))
    t0 = 0 if prime is None else len(prime)
    lap("sample")

    out_dir = Path(g.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"midi": [], "npz": [], "png": []}
    velocities = []
    for i, hits in enumerate(rolls):
        velocity, offset = played_values(hits, vels[i], offs[i], t0, int(g.velocity), prime_played)
        stem = out_dir / f"sample_{i:03d}"
        save_midi(stem.with_suffix(".mid"), hits, velocity, drum_map=drum_map, bpm=bpm,
                  steps_per_quarter=spq, beats_per_bar=beats, offset=offset, beat_unit=unit)
        save_npz(stem.with_suffix(".npz"), velocity, offset)
        files["midi"].append(stem.with_suffix(".mid"))
        files["npz"].append(stem.with_suffix(".npz"))
        velocities.append(velocity)
    lap("write")
    sheet = None
    if g.plots:
        sheet = _pictures(out_dir, rolls, velocities, list(drum_map.names), spb, spq, files,
                          bool(g.get("sample_pictures", False)))
    lap("plots")
    result = {"checkpoint": ckpt_path, "rolls": rolls, "files": files, "sheet": sheet, "bpm": bpm,
              "time_signature": f"{beats}/{unit}", "steps_per_bar": spb,
              "prime_steps": 0 if prime is None else len(prime), "length": length, "timings": timings,
              "sample_threads": threads}
    result["page"] = _page(cfg, result, drum_map, spb, spq) if g.plots else None
    lap("page")
    return result


def _page(cfg: DictConfig, result: dict, drum_map: DrumMap, spb: int, spq: int) -> Path:
    """index.html: every sample's roll, audio and MIDI beside real excerpts (train/report)."""
    from train.report import write_generate_page

    return write_generate_page(cfg, result, drum_map, spb, spq)


def _pictures(out_dir: Path, rolls: np.ndarray, velocities: list, names: list[str], spb: int, spq: int,
              files: dict, per_sample: bool) -> Path:
    """sheet.png (every sample) and, with `per_sample`, sample_NNN.png: the page's coloured rolls
    (train/report/rolls.py, numpy + Pillow), hits shaded by velocity; no matplotlib (its import and
    text layout were most of generate's time outside sampling: benchmarks/README.md, start-up)."""
    from train.report.rolls import save_roll, save_roll_sheet

    for i, (hits, velocity) in enumerate(zip(rolls, velocities) if per_sample else ()):
        png = out_dir / f"sample_{i:03d}.png"
        save_roll(png, hits, names, spb, spq, velocity)
        files["png"].append(png)
    return save_roll_sheet(out_dir / "sheet.png", list(rolls), names, spb, spq, velocities,
                           titles=[f"sample {i}" for i in range(len(rolls))])


def summary(result: dict, report: str | None) -> str:
    """The closing lines: where the MIDI files, pictures and report are."""
    files = result["files"]
    out_dir = files["midi"][0].parent
    n = len(files["midi"])
    prime = f" after a {result['prime_steps']}-step prime" if result["prime_steps"] else ""
    meter = f" in {result['time_signature']}" if result.get("time_signature") else ""
    lines = [f"Generated {n} drum sample(s) of {result['length']} steps{prime}{meter} at {result['bpm']:g} bpm "
             f"from {result['checkpoint']}",
             f"  MIDI files: {out_dir}/sample_*.mid ({n} files, e.g. {files['midi'][0]})",
             f"  NPZ rolls:  {out_dir}/sample_*.npz (key `sequence`)"]
    if result["sheet"]:
        each = f"{out_dir}/sample_*.png and " if files["png"] else ""
        lines.append(f"  Pictures:   {each}{result['sheet']} (all samples)")
    if report:
        where = report if Path(report).is_file() else f"{report} (not there yet: run `python -m train.evaluate`)"
        lines.append(f"  Report:     {where}")
    if result.get("page"):
        lines.append(f"  Listen:     {result['page']} (piano rolls and audio; open it in a browser)")
    return "\n".join(lines)


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("generate", FileNotFoundError, ValueError, KeyError), \
            common.config.exit_on("generate", ConfigError, code=2):    # an unknown generate.style …
        result = run(cfg)
    print(summary(result, cfg.generate.get("report")))
