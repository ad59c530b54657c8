"""The HTML pages: `data/generated/index.html` (generate) and `data/eval/report.html` (evaluate).

Each generated sample gets a piano roll, an audio player and its MIDI file, beside a real excerpt
of the same split (songs and bars chosen by seed), so one listens to the model next to a drummer.
The page files live next to the page (`preview/`), the audio in the stage's `audio_dir`; every link
is relative, so the folder can be copied or served as it is. Jinja2 templates: `templates/`.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from omegaconf import DictConfig, OmegaConf

from common.atomic import atomic_path
from pipeline.drums import DrumMap
from pipeline.midi import write_midi
from pipeline.store import Store
from train.report.audio import audio_name, find_synth, render_all
from train.report.rolls import save_roll

TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class Clip:
    """One sample on the page; paths relative to the page."""

    title: str
    caption: str
    roll: str
    midi: str
    audio: str | None = None


@dataclass
class Excerpt:
    """Drums to show: hits [T, D], velocity [T, D] or None (the model predicted hits only)."""

    title: str
    caption: str
    hits: np.ndarray
    velocity: np.ndarray | None
    bpm: float


def store_drum_map(store: Store) -> DrumMap:
    pitches = [int(p) for p in store.attrs["drum_pitches"]]
    return DrumMap(tuple(store.drum_names), tuple(pitches), {p: i for i, p in enumerate(pitches)})


def pick_real(store: Store, split: str, count: int, length: int, steps_per_bar: int, seed: int) -> list[Excerpt]:
    """`count` excerpts of `length` steps (a song's whole length if shorter) from distinct songs of
    `split` in `steps_per_bar` meter, each starting at a bar line; songs and bars chosen by `seed`."""
    ids = np.arange(store.num_songs) if split == "all" else store.songs_in_split(split)
    ids = ids[store.meta["steps_per_bar"][ids] == steps_per_bar]
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(ids)[:count]:
        sl = store.song_slice(int(i))
        bars = (sl.stop - sl.start) // steps_per_bar
        bar = int(rng.integers(0, max(1, bars - math.ceil(length / steps_per_bar) + 1)))
        a = sl.start + bar * steps_per_bar
        b = min(a + length, sl.stop)
        bpm = float(store.meta["bpm"][i])
        bpm = bpm if math.isfinite(bpm) and bpm > 0 else 120.0
        out.append(Excerpt(f"Real {len(out) + 1}", f"{store.meta['name'][i]}, from bar {bar + 1} · {bpm:g} bpm",
                           np.asarray(store.hits[a:b]), np.asarray(store.velocity[a:b]), bpm))
    return out


def write_excerpts(folder: Path, stem: str, excerpts: list[Excerpt], drum_map: DrumMap, steps_per_bar: int,
                   steps_per_quarter: int) -> list[tuple[str, str, Path, Path]]:
    """Each excerpt's MIDI file and piano roll under `folder` (`<stem>_NNN.mid/.png`);
    [(title, caption, roll, MIDI)]."""
    files = []
    for i, ex in enumerate(excerpts):
        midi = write_midi(folder / f"{stem}_{i:03d}.mid", ex.hits, ex.velocity, drum_map=drum_map, bpm=ex.bpm,
                          steps_per_quarter=steps_per_quarter, beats_per_bar=steps_per_bar // steps_per_quarter)
        roll = save_roll(folder / f"{stem}_{i:03d}.png", ex.hits, list(drum_map.names), steps_per_bar,
                         steps_per_quarter, ex.velocity)
        files.append((ex.title, ex.caption, roll, midi))
    return files


def audio_links(cfg: DictConfig, enabled: bool, midis: list[Path], audio_dir: Path) -> tuple[dict, str | None]:
    """({midi: audio path}, the line shown instead of players or None). Renders now when
    `preview.render`; else names the files the dvc `render` stage will write. Says once on stderr
    why there is no audio."""
    if not enabled:
        return {}, "Audio previews are off (preview=false)."
    synth, missing = find_synth(cfg.preview)
    if synth is None:
        print(missing, file=sys.stderr, flush=True)
        return {}, missing
    if cfg.preview.render:
        return render_all(synth, midis, audio_dir), None
    return {Path(m): audio_dir / audio_name(synth, m) for m in midis}, None


def rel(path: Path, page: Path) -> str:
    """`path` as a link from `page` (relative: the folder can be moved or served as it is)."""
    return Path(os.path.relpath(Path(path).resolve(), page.parent.resolve())).as_posix()


def clip(title: str, caption: str, roll: Path, midi: Path, audio: dict, page: Path) -> Clip:
    sound = audio.get(Path(midi))
    return Clip(title, caption, rel(roll, page), rel(midi, page), rel(sound, page) if sound else None)


def render_page(template: str, page: Path, **context) -> Path:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    page.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(page) as tmp:
        Path(tmp).write_text(env.get_template(template).render(**context), encoding="utf-8")
    return page


def config_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def real_excerpts(store: Store | str | Path, split: str, count: int, length: int, steps_per_bar: int,
                  seed: int) -> tuple[list[Excerpt], DrumMap | None, str | None]:
    """(excerpts, the store's drum map, None) or ([], None, why there are none)."""
    try:
        store = store if isinstance(store, Store) else Store(store)
        real = pick_real(store, split, count, length, steps_per_bar, seed)
    except (FileNotFoundError, ValueError, KeyError) as err:
        return [], None, f"No real excerpts to compare with: {err}"
    if count and not real:
        return [], None, (f"No real excerpts: no song of split {split!r} in {store.path} has "
                          f"{steps_per_bar} steps a bar.")
    return real, store_drum_map(store), None


def pair_clips(cfg: DictConfig, preview: bool, audio_dir: Path, page: Path,
               generated: list[tuple[str, str, Path, Path]], real: list[tuple[str, str, Path, Path]]):
    """[(generated Clip, real Clip or None)] and the line shown instead of players (or None);
    each tuple is (title, caption, roll PNG, MIDI)."""
    audio, no_audio = audio_links(cfg, preview, [m for *_, m in generated + real], audio_dir)
    gen = [clip(*g, audio, page) for g in generated]
    ref = [clip(*r, audio, page) for r in real]
    return [(g, ref[i] if i < len(ref) else None) for i, g in enumerate(gen)], no_audio


def write_generate_page(cfg: DictConfig, result: dict, drum_map: DrumMap, steps_per_bar: int,
                        steps_per_quarter: int) -> Path:
    """`generate.out_dir/index.html` for the samples `train.generate.run` wrote (`result`)."""
    g = cfg.generate
    out_dir = Path(g.out_dir)
    page, assets = out_dir / "index.html", out_dir / "preview"
    names = list(drum_map.names)
    generated = []
    for i, (midi, npz) in enumerate(zip(result["files"]["midi"], result["files"]["npz"])):
        with np.load(npz, allow_pickle=False) as f:   # the velocities the MIDI file holds
            velocity = np.asarray(f["sequence"])
        roll = save_roll(assets / f"{Path(midi).stem}.png", velocity > 0, names, steps_per_bar,
                         steps_per_quarter, velocity)
        generated.append((f"Sample {i + 1}", f"{Path(midi).name} · {result['bpm']:g} bpm", roll, Path(midi)))
    length = int(result["rolls"].shape[1])
    real, real_map, no_real = real_excerpts(cfg.paths.store, str(g.compare_split), len(generated), length,
                                            steps_per_bar, int(g.seed))
    real_files = write_excerpts(assets, "real", real, real_map, steps_per_bar, steps_per_quarter)
    pairs, no_audio = pair_clips(cfg, bool(g.preview), Path(g.audio_dir), page, generated, real_files)
    prime = f", after {result['prime_steps']} steps of {g.prime}" if result["prime_steps"] else ""
    settings = {"samples": len(generated), "length": f"{result['length']} steps{prime}",
                "tempo": f"{result['bpm']:g} bpm", "temperature": g.temperature, "top-p": g.top_p or "off",
                "seed": g.seed, "real excerpts": f"{g.compare_split} split of {cfg.paths.store}"}
    return render_page("generate.html", page, title="Generated drums", checkpoint=str(result["checkpoint"]),
                       settings=settings, config=config_yaml(cfg), pairs=pairs, no_audio=no_audio,
                       no_real=no_real)


def write_eval_page(cfg: DictConfig, result: dict, pictures: dict, store: Store,
                    generated: np.ndarray | None) -> Path:
    """`evaluate.out_dir/report.html`: the scores, the plots and generated windows beside real ones."""
    e = cfg.evaluate
    out_dir = Path(e.out_dir)
    page, assets = out_dir / "report.html", out_dir / "preview"
    spb, spq = int(cfg.window.steps_per_bar), int(store.attrs.get("steps_per_quarter", 4))
    k = 0 if generated is None else min(int(e.sheet_samples), len(generated))
    excerpts = [Excerpt(f"Generated {i + 1}", f"{len(generated[i])} steps from nothing · 120 bpm", generated[i],
                        None, 120.0) for i in range(k)]
    generated_files = write_excerpts(assets, "generated", excerpts, store_drum_map(store), spb, spq)
    real, real_map, no_real = real_excerpts(store, str(cfg.split), k, int(cfg.window.seq_len), spb,
                                            int(e.generated.seed))
    real_files = write_excerpts(assets, "real", real, real_map, spb, spq)
    pairs, no_audio = pair_clips(cfg, bool(e.preview), Path(e.audio_dir), page, generated_files, real_files)
    images = {key: rel(Path(p), page) for key, p in pictures.items()}
    return render_page("evaluate.html", page, title=f"Evaluation on the {result['split']} split",
                       checkpoint=result["checkpoint"], result=result, images=images, config=config_yaml(cfg),
                       pairs=pairs, no_audio=no_audio, no_real=no_real)
