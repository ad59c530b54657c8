"""pipeline/sources/: the registry, a new format as one module and its registration, and one open
per NPZ file (ingest and generate's prime reader read through the same `read_file`)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from common.config import compose
from pipeline import sources
from pipeline.ingest import IngestError, ingest, iter_records
from pipeline.sources import npz
from pipeline.sources.base import Source, check_entry, input_folder, scan_folder, song_id, validate_song
from pipeline.store import Song


def test_an_unknown_source_is_an_error_naming_the_known_ones(tmp_path):
    with pytest.raises(IngestError, match=r"data.source 'abc' is not a known source; known: builtin, midi, npz"):
        sources.get("abc")
    cfg = compose(["data=npz", f"data.path={tmp_path}", "data.source=abc", f"paths.data_dir={tmp_path / 'out'}"])
    with pytest.raises(IngestError, match="known: builtin, midi, npz"):
        ingest(cfg)


class _TextSource(Source):
    """A format the code base does not know: one line of 0/1 characters per step."""

    name, suffixes = "text", (".txt",)

    def __init__(self, cfg, drum_map):
        self.root = input_folder(cfg.data)
        self.where = str(self.root)

    def items(self):
        return [(self.root / rel, rel) for rel in scan_folder(self.root, set(self.suffixes))]

    def load(self, item):
        path, rel = item
        check_entry(path)
        hits = np.array([[c == "1" for c in line] for line in path.read_text().split()], np.uint8)
        return validate_song(Song(name=song_id(rel), hits=hits, velocity=hits * 100, source=rel), str(path)), 0, {}


def test_a_new_format_is_one_module_and_its_registration(tmp_path, monkeypatch):
    """Registering a Source is all ingest needs: no if-chain elsewhere names the formats."""
    monkeypatch.setitem(sources.SOURCES, "text", _TextSource)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("100000000\n001000000\n" * 8)
    (tmp_path / "in" / "b.txt").write_text("")                      # bad input, reported
    cfg = compose(["data=npz", f"data.path={tmp_path / 'in'}", "data.source=text",
                   f"paths.data_dir={tmp_path / 'out'}", "ingest.scheduler=synchronous"])
    report = ingest(cfg)
    assert (report["songs"], report["steps"], report["skipped_count"]) == (1, 16, 1)
    assert report["skipped"][0]["reason"].endswith("b.txt: empty file")
    (rec,) = iter_records(tmp_path / "out" / "interim")
    assert rec["name"] == "a" and rec["num_drums"] == 9


class _Opens:
    """Counts the opens of one path (an audit hook cannot be removed: it stays off outside `with`)."""

    active: "_Opens | None" = None
    hooked = False

    def __init__(self, path):
        self.path, self.count = str(path), 0
        if not _Opens.hooked:
            sys.addaudithook(_Opens._hook)
            _Opens.hooked = True

    @staticmethod
    def _hook(event, args):
        me = _Opens.active
        if me is not None and event == "open" and args and str(args[0]) == me.path:
            me.count += 1

    def __enter__(self):
        _Opens.active = self
        return self

    def __exit__(self, *exc):
        _Opens.active = None


def test_an_npz_file_is_opened_once_by_the_ingest_and_by_the_prime_reader(tmp_path):
    from pipeline.drums import DrumMap
    from train.generate.run import read_prime

    rng = np.random.default_rng(0)
    seq = (rng.random((32, 9)) < 0.3) * rng.integers(1, 128, (32, 9))
    path = tmp_path / "a.npz"
    np.savez_compressed(path, sequence=seq, sections=np.array([[0, 16], [16, 32]]))
    with _Opens(path) as opens:
        song = npz.load_npz(path, "a.npz", steps_per_bar=16, bpm=120.0, max_steps=1000)
    assert opens.count == 1
    np.testing.assert_array_equal(song.velocity, seq)
    np.testing.assert_array_equal(song.sections, [[0, 16], [16, 32]])
    with _Opens(path) as opens:
        prime = read_prime(path, DrumMap.default(), 4, 16)
    assert opens.count == 1
    np.testing.assert_array_equal(prime.hits, seq > 0)
    np.testing.assert_array_equal(prime.velocity, seq)


def test_every_registered_source_reads_files_or_says_it_has_none():
    for name, cls in sources.SOURCES.items():
        assert issubclass(cls, Source) and cls.name == name
        module = sys.modules[cls.__module__]
        assert callable(module.read_file), name
    with pytest.raises(ValueError, match="generated, not read from files"):
        sys.modules[sources.SOURCES["builtin"].__module__].read_file(Path("x"))
