"""Audio previews: MIDI -> a small audio file with FluidSynth and a General MIDI SoundFont.

FluidSynth (Debian `fluidsynth`) writes Ogg Vorbis itself through libsndfile (`format: oga`, about
a tenth of the WAV size), so no separate encoder is needed; `flac` and `wav` work too.
The file name holds a hash of the MIDI bytes and the synth settings (`sample_000-1f2e3d4c5b.ogg`):
a page can name the audio before it exists (the dvc `render` stage writes it later), and a
render skips every file that is already there, so unchanged MIDI is never rendered twice.
When FluidSynth or the SoundFont is missing, `find_synth` says what to install instead.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_path

INSTALL = "apt-get install fluidsynth fluid-soundfont-gm"
SUFFIX = {"oga": ".ogg", "flac": ".flac", "wav": ".wav"}


@dataclass(frozen=True)
class Synth:
    program: str           # the fluidsynth executable
    soundfont: Path
    format: str            # oga | flac | wav
    sample_rate: int
    gain: float

    def key(self) -> bytes:
        """What, besides the MIDI, decides the sound: part of every audio file's name."""
        return f"{self.soundfont.name}|{self.format}|{self.sample_rate}|{self.gain}".encode()


def find_synth(preview) -> tuple[Synth | None, str | None]:
    """(Synth, None) when FluidSynth and the SoundFont are there, else (None, one line saying what to
    install). `preview` is the `preview` config block (conf/config.yaml)."""
    fmt = str(preview.format)
    if fmt not in SUFFIX:
        raise ValueError(f"preview.format={fmt!r}: expected one of {sorted(SUFFIX)}")
    program = shutil.which(str(preview.fluidsynth))
    soundfont = Path(str(preview.soundfont))
    missing = []
    if program is None:
        missing.append(f"FluidSynth (`{preview.fluidsynth}` is not on PATH)")
    if not soundfont.is_file():
        missing.append(f"a General MIDI SoundFont ({soundfont} not found)")
    if missing:
        return None, (f"No audio previews: {' and '.join(missing)}. Install them to hear the drums "
                      f"(Debian/Ubuntu: `{INSTALL}`), then run again.")
    return Synth(program, soundfont, fmt, int(preview.sample_rate), float(preview.gain)), None


def audio_name(synth: Synth, midi: str | Path) -> str:
    """`<midi stem>-<hash of the MIDI bytes and the synth settings>.<ext>`."""
    midi = Path(midi)
    digest = hashlib.sha1(midi.read_bytes() + b"\0" + synth.key()).hexdigest()[:10]
    return f"{midi.stem}-{digest}{SUFFIX[synth.format]}"


# Load only the SoundFont samples the MIDI file plays (FluidSynth >= 2.0): a drum clip uses a few
# of the 148 MB's instruments, and loading them all was ~0.1 of each clip's ~0.5 CPU-s
# (benchmarks/README.md, audio previews); the audio is the same (within 2 of 32,768, dither).
LAZY_LOADING = ("-o", "synth.dynamic-sample-loading=1")


def _fluidsynth(synth: Synth, midi: Path, out: Path, options: tuple[str, ...]) -> subprocess.CompletedProcess:
    cmd = [synth.program, "-ni", "-q", "-g", str(synth.gain), "-r", str(synth.sample_rate), *options,
           "-T", synth.format, "-F", str(out), str(synth.soundfont), str(midi)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "LC_ALL": "C"})


def render(synth: Synth, midi: str | Path, out: str | Path) -> Path:
    """Render one MIDI file to `out` (written to a temp sibling, then renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        proc = _fluidsynth(synth, Path(midi), Path(tmp), LAZY_LOADING)
        if proc.returncode != 0 and "dynamic-sample-loading" in proc.stderr + proc.stdout:
            proc = _fluidsynth(synth, Path(midi), Path(tmp), ())      # a FluidSynth older than 2.0
        if proc.returncode != 0 or not Path(tmp).is_file() or Path(tmp).stat().st_size == 0:
            raise RuntimeError(f"{midi}: FluidSynth could not render it "
                               f"(exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]})")
    return out


def render_all(synth: Synth, midis, audio_dir: str | Path) -> dict[Path, Path]:
    """Render each MIDI file into `audio_dir` under its `audio_name`, skipping files already there;
    {midi: audio path}. A file FluidSynth fails on is reported and left out, the others go on.
    Older renders of the same MIDI names are removed, so rerunning a command does not pile up audio."""
    audio_dir = Path(audio_dir)
    midis = [Path(m) for m in midis]
    outs = [audio_dir / audio_name(synth, m) for m in midis]
    todo = {m: o for m, o in zip(midis, outs) if not o.is_file()}
    # One FluidSynth process per file, as many at once as there are cores: each is one single-threaded
    # synthesis (seconds per clip), so the page's clips render side by side instead of one by one.
    with ThreadPoolExecutor(max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        futures = {m: pool.submit(render, synth, m, o) for m, o in todo.items()}
    done = {}
    for midi, out in zip(midis, outs):
        try:
            done[midi] = futures[midi].result() if midi in futures else out
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"render: {err}", file=sys.stderr, flush=True)
    prune(audio_dir, {m.stem for m in midis}, {p.name for p in done.values()})
    return done


def prune(audio_dir: Path, stems: set[str], keep: set[str]) -> None:
    """Delete `<stem>-<hash>.<ext>` files of these stems in `audio_dir` other than `keep`."""
    pattern = re.compile(r"^(.+)-[0-9a-f]{10}(" + "|".join(re.escape(s) for s in SUFFIX.values()) + r")$")
    for path in audio_dir.glob("*-*") if audio_dir.is_dir() else ():
        m = pattern.match(path.name)
        if m and m.group(1) in stems and path.name not in keep:
            path.unlink()
