"""Drum classes and the MIDI pitch -> class mapping (conf/drums/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class DrumMap:
    names: tuple[str, ...]          # class names, in roll column order
    pitches: tuple[int, ...]        # canonical General MIDI pitch of each class (used when writing MIDI)
    pitch_to_class: dict[int, int]  # every mapped MIDI pitch -> column

    @property
    def num_drums(self) -> int:
        return len(self.names)

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
        from pipeline.config import CONF_DIR

        return cls.from_config(OmegaConf.load(CONF_DIR / "drums" / "gmd9.yaml"))

    def to_attrs(self) -> dict:
        """JSON-able form stored in the Zarr attributes."""
        return {"drum_names": list(self.names), "drum_pitches": list(self.pitches),
                "mapping": {str(k): v for k, v in sorted(self.pitch_to_class.items())}}
