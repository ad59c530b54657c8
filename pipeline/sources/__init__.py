"""Input sources as plug-ins: one module per format, registered here by the name `data.source`
(conf/data/<name>.yaml) gives. Each module offers a `Source` subclass (options from the config,
`items()`, `load(item)`; pipeline/sources/base.py) and `read_file(path, ...)` for one file.

Adding a format: a module here, its line in SOURCES, a conf/data/<name>.yaml and its entry in
docs/data.md (docs/architecture.md, "Adding a new input format"). Nothing else names the formats.
"""
from __future__ import annotations

from pipeline.sources import builtin, midi, npz
from pipeline.sources.base import BadInput, IngestError, Source

SOURCES: dict[str, type[Source]] = {
    "builtin": builtin.BuiltinSource,     # the procedural corpus (pipeline/corpus.py)
    "npz": npz.NpzSource,                 # a folder of NPZ piano rolls
    "midi": midi.MidiSource,              # a folder of drum MIDI files (+ Groove's info.csv)
}


def get(name: str) -> type[Source]:
    """The source registered as `name`; an unknown name is an IngestError listing the known ones."""
    try:
        return SOURCES[name]
    except (KeyError, TypeError):
        raise IngestError(f"data.source {name!r} is not a known source; known: {', '.join(sorted(SOURCES))}") from None


__all__ = ["SOURCES", "BadInput", "IngestError", "Source", "get"]
