"""Source `builtin`: the procedural corpus (conf/data/builtin.yaml, pipeline/corpus.py; docs/corpus.md).

Items are song numbers: song i depends only on the seed and i, so each task generates its own songs
(parallel, and the driver never holds the corpus). There are no files: `read_file` refuses.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.drums import DrumMap
from pipeline.sources.base import BadInput, IngestError, Source, validate_song
from pipeline.store import Song


class BuiltinSource(Source):
    name = "builtin"

    def __init__(self, cfg: DictConfig, drum_map: DrumMap):
        from pipeline.corpus import check_drum_map, song_maker

        opts = OmegaConf.to_container(cfg.data.corpus, resolve=True)
        self.num_songs, self.seed = int(opts.pop("num_songs")), int(opts.pop("seed"))
        self.corpus, self._make = opts, None
        check_drum_map(drum_map.names)   # the configured map: it labels the store's columns
        try:
            song_maker(self.seed, **opts)   # a bad option stops ingest once, not once per song
        except ValueError as exc:
            raise IngestError(f"data.{exc}") from None
        self.where = f"builtin corpus (seed {self.seed})"

    def __getstate__(self):            # the corpus maker (a closure) is rebuilt where the task runs
        return {**self.__dict__, "_make": None}

    def items(self) -> range:
        return range(self.num_songs)   # a range, not a list: nothing per song in the driver

    def load(self, item: int) -> tuple[Song, int, dict]:
        if self._make is None:     # corpus options checked once per process, not per song
            from pipeline.corpus import song_maker
            self._make = song_maker(self.seed, **self.corpus)
        song = validate_song(self._make(item), f"builtin song {item}")
        return song, int(song.hits.sum()), {}


def read_file(path: Path, **_) -> None:
    raise BadInput(f"{path}: the built-in corpus is generated, not read from files")
