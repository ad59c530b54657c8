"""Drum classes and the MIDI pitch -> class mapping (conf/drums/*.yaml)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class DrumMap:
    names: tuple[str, ...]          # class names, in roll column order
    pitches: tuple[int, ...]        # canonical General MIDI pitch of each class (used when writing MIDI)
    pitch_to_class: dict[int, int]  # every mapped MIDI pitch -> column

    @property
    def num_drums(self) -> int:
        return len(self.names)

    @functools.cached_property
    def lookup(self) -> np.ndarray:
        """int64 [128]: MIDI pitch -> column, -1 where unmapped (one gather per file when reading MIDI)."""
        lut = np.full(128, -1, np.int64)
        for p, c in self.pitch_to_class.items():
            lut[p] = c
        return lut

    @classmethod
    def from_config(cls, cfg: DictConfig | dict) -> DrumMap:
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        names, pitches, mapping = [], [], {}
        for column, entry in enumerate(cfg["classes"]):
            names.append(str(entry["name"]))
            pitches.append(int(entry["pitch"]))
            for p in entry["pitches"]:
                if int(p) in mapping:
                    raise ValueError(f"drum map {cfg.get('name', '?')}: pitch {p} is mapped twice")
                mapping[int(p)] = column
        return cls(tuple(names), tuple(pitches), mapping)

    @classmethod
    def default(cls) -> DrumMap:
        from common.config import CONF_DIR

        return cls.from_config(OmegaConf.load(CONF_DIR / "drums" / "gmd9.yaml"))

    def to_attrs(self) -> dict:
        """JSON-able form stored in the Zarr attributes."""
        return {"drum_names": list(self.names), "drum_pitches": list(self.pitches),
                "mapping": {str(k): v for k, v in sorted(self.pitch_to_class.items())}}
