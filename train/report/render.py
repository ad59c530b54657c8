"""`python -m train.report.render [overrides]`: the dvc `render` stage.

Renders every MIDI file under each `render.folders[*].midi` into its `audio` folder, under the
names the pages link (train.report.audio.audio_name). The pages are written first with
`preview.render=false`, so rendering is a stage of its own and DVC caches the audio. Without
FluidSynth or the SoundFont it says once what to install and leaves the audio folders empty.
Config: `conf/render.yaml`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import common.config
from train.report.audio import find_synth, render_all


def render_folders(cfg: DictConfig) -> dict[Path, Path]:
    """{midi: audio} over every folder; a missing MIDI folder counts as empty."""
    synth, missing = find_synth(cfg.preview)
    done = {}
    for folder in cfg.render.folders:
        audio_dir = Path(folder.audio)
        audio_dir.mkdir(parents=True, exist_ok=True)   # DVC needs the output even when it is empty
        if synth is not None:
            done.update(render_all(synth, sorted(Path(folder.midi).rglob("*.mid")), audio_dir))
    if missing:
        print(missing, file=sys.stderr)
    return done


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="render", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("render", ValueError, code=2):   # a bad preview.* value
        done = render_folders(cfg)
    print(f"Rendered {len(done)} audio preview(s): {', '.join(str(f.audio) for f in cfg.render.folders)}")


if __name__ == "__main__":
    main()
