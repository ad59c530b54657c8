"""The built-in procedural corpus: determinism, schema, styles, structure and the planted regularities."""
import hashlib

import numpy as np
import pytest

from common.config import compose
from pipeline.corpus import DRUMS, STYLES, generate_corpus, generate_song, iter_corpus, song_maker
from pipeline.drums import DrumMap

KICK, SNARE, CRASH = DRUMS.index("kick"), DRUMS.index("snare"), DRUMS.index("crash")
TOMS = [DRUMS.index(d) for d in ("low_tom", "mid_tom", "high_tom")]
BARS_PER_PHRASE = 4


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(num_songs=120, seed=3)


def _bars(song):
    return song.hits.reshape(-1, song.steps_per_bar, song.hits.shape[1])


def test_same_seed_same_arrays_and_prefix_stable_across_num_songs(corpus):
    small = generate_corpus(num_songs=7, seed=3)
    for a, b in zip(small, corpus[:7]):
        assert a.name == b.name and a.bpm == b.bpm and a.style == b.style
        np.testing.assert_array_equal(a.hits, b.hits)
        np.testing.assert_array_equal(a.velocity, b.velocity)
        np.testing.assert_array_equal(a.sections, b.sections)
    one = generate_song(5, seed=3)
    np.testing.assert_array_equal(one.velocity, corpus[5].velocity)
    other = generate_corpus(num_songs=7, seed=4)
    assert not any(np.array_equal(a.hits, b.hits) for a, b in zip(small, other) if a.hits.shape == b.hits.shape)


def test_schema_dtypes_shapes_and_velocity_iff_hit(corpus):
    assert DrumMap.default().names == DRUMS
    names = set()
    for s in corpus:
        assert s.hits.dtype == np.uint8 and s.velocity.dtype == np.uint8
        assert s.hits.shape == s.velocity.shape and s.hits.shape[1] == 9
        assert set(np.unique(s.hits)) <= {0, 1}
        np.testing.assert_array_equal(s.velocity > 0, s.hits == 1)
        assert s.velocity.max() <= 127
        assert s.num_steps % s.steps_per_bar == 0 and 28 <= s.num_steps // s.steps_per_bar <= 64
        assert s.name == f"builtin/{s.style}_{int(s.name.rsplit('_', 1)[1]):04d}"
        assert (s.source, s.split, s.drummer, s.beat_type) == ("builtin", "", "builtin", "beat")
        lo, hi = STYLES[s.style].bpm
        assert lo <= s.bpm <= hi
        names.add(s.name)
    assert len(names) == len(corpus)


def test_every_style_appears_and_waltz_is_three_four(corpus):
    styles = {s.style for s in corpus}
    assert styles == {"rock", "funk", "shuffle", "bossa", "hiphop", "waltz"}
    for s in corpus:
        expected = (12, 3) if s.style == "waltz" else (16, 4)
        assert (s.steps_per_bar, s.beats_per_bar) == expected, s.name


def test_sections_tile_the_song_in_whole_phrases(corpus):
    for s in corpus:
        sec = s.sections
        assert sec.dtype == np.int64 and sec.ndim == 2 and sec.shape[1] == 2 and len(sec) >= 3
        assert sec[0, 0] == 0 and sec[-1, 1] == s.num_steps
        np.testing.assert_array_equal(sec[1:, 0], sec[:-1, 1])
        assert np.all((sec[:, 1] - sec[:, 0]) % (BARS_PER_PHRASE * s.steps_per_bar) == 0)
        assert np.all(sec[:, 1] > sec[:, 0])


def test_fills_and_crashes_sit_at_phrase_boundaries(corpus):
    # Tom/snare density in the last bar of a phrase vs. the other bars (the song's ending excluded).
    fill_end, fill_other, crash_start, crash_other = [], [], [], []
    for s in corpus:
        bars = _bars(s)[:-2].astype(float)
        phrase_end = np.arange(len(bars)) % BARS_PER_PHRASE == BARS_PER_PHRASE - 1
        density = bars[:, :, TOMS].sum((1, 2)) + bars[:, :, SNARE].sum(1)
        fill_end += density[phrase_end].tolist()
        fill_other += density[~phrase_end].tolist()
        crash = bars[1:, 0, CRASH]
        phrase_start = (np.arange(1, len(bars)) % BARS_PER_PHRASE) == 0
        crash_start += crash[phrase_start].tolist()
        crash_other += crash[~phrase_start].tolist()
    assert np.mean(fill_end) > 1.5 * np.mean(fill_other)
    assert np.mean(crash_start) > 0.4 and np.mean(crash_other) < 0.02
    toms_end = sum(_bars(s)[3::4][:, :, TOMS].sum() for s in corpus)
    toms_all = sum(s.hits[:, TOMS].sum() for s in corpus)
    assert toms_end > 0.7 * toms_all


def test_grooves_have_their_style(corpus):
    rock = [s for s in corpus if s.style == "rock"]
    downbeat_kick = np.mean(np.concatenate([_bars(s)[:-1, 0, KICK] for s in rock]))
    # Backbeat in the verse and chorus (sections 1 and 2), outside the phrases' fill bars.
    backbeat = np.mean(np.concatenate([_bars(s)[s.sections[1, 0] // 16:s.sections[2, 1] // 16][:3]
                                       [:, [4, 12], SNARE].reshape(-1) for s in rock]))
    assert downbeat_kick > 0.9 and backbeat > 0.85
    # Shuffle: the swung 8th lands on the beat's last 16th, never on the straight "and".
    hat = DRUMS.index("closed_hihat")
    shuffle = np.concatenate([_bars(s)[:-1, :, hat] for s in corpus if s.style == "shuffle"])
    assert shuffle[:, 3::4].mean() > 0.3 and shuffle[:, 2::4].mean() < 0.05
    # Waltz: kick on beat 1, snare on beats 2 and 3 of the 12-step bar (in the verse).
    waltz = np.concatenate([_bars(s)[s.sections[1, 0] // 12:][:3] for s in corpus if s.style == "waltz"])
    assert waltz[:, 0, KICK].mean() > 0.9 and waltz[:, [4, 8], SNARE].mean() > 0.85


def test_a_section_groove_returns_unchanged_in_later_sections():
    # Grooves are realised once per song and section kind: the second verse plays the first verse's
    # groove, while the chorus plays another. Sections 1, 2, 3 are verse, chorus, verse.
    def groove(bars, start):  # the hits both bars 1 and 2 of the section play (past the crash, before a fill)
        return bars[start + 1:start + 3].all(0)

    def jaccard(a, b):
        return (a & b).sum() / (a | b).sum()

    same, other = [], []
    for s in generate_corpus(num_songs=24, seed=1):
        bars, starts = _bars(s).astype(bool), s.sections[:, 0] // s.steps_per_bar
        if len(starts) >= 5:
            same.append(jaccard(groove(bars, starts[1]), groove(bars, starts[3])))
            other.append(jaccard(groove(bars, starts[1]), groove(bars, starts[2])))
    assert len(same) > 10
    assert np.mean(same) > 0.8 and np.mean(other) < 0.6


def test_config_drives_it_and_bad_options_are_named():
    cfg = compose(["data=builtin", "data.corpus.num_songs=6", "data.corpus.styles=[waltz]"])
    assert cfg.data.source == "builtin"
    songs = generate_corpus(**cfg.data.corpus)
    assert len(songs) == 6 and {s.style for s in songs} == {"waltz"}
    with pytest.raises(ValueError, match="swing_amount"):
        generate_corpus(num_songs=1, swing_amount=0.6)
    with pytest.raises(ValueError, match="polka"):
        generate_corpus(num_songs=1, styles=["rock", "polka"])
    assert sum(1 for _ in iter_corpus(3)) == 3


def _corpus_hash(songs) -> str:
    h = hashlib.sha256()
    for s in songs:
        h.update(repr((s.name, s.style, float(s.bpm), s.steps_per_bar, s.beats_per_bar, s.hits.shape)).encode())
        for a in (s.hits, s.velocity, s.sections):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# Every option moved off its default, jitter not a power of two (float32 rounding of its products shows).
VARIANT = dict(styles=["waltz", "funk", "bossa"], bars_per_phrase=2, min_bars=8, max_bars=40, ending=False,
               phrase_fill_prob=0.8, section_fill_prob=1.0, ghost_prob=0.9, drop_prob=0.2, add_prob=0.05,
               velocity_jitter=3.3)


@pytest.mark.parametrize("num_songs, seed, options, digest", [
    (300, 0, {}, "04ad14b0232dba0cb8668139b1902cd5d5b07496d7a837534e84701273024c7b"),
    (200, 7, VARIANT, "0a36d69da8db21ac3836222e7d68431fe0ef5709f0831d130d98c2aa3984ea45"),
])
def test_corpus_is_bit_identical_to_the_per_song_numpy_generator(num_songs, seed, options, digest):
    # Digests of the numpy generator this numba one replaced (commit 9ac7371, unchanged since 59db6a3):
    # the demo's and the docs' figures are measured on this corpus, so a faster generator must draw
    # the same numbers in the same order and round the same way (float32 sums, float64 from there).
    assert _corpus_hash(generate_corpus(num_songs, seed, **options)) == digest
    make = song_maker(seed, **options)
    assert _corpus_hash([make(i) for i in range(num_songs)]) == digest


def test_ingest_names_a_bad_corpus_option(tmp_path):
    from pipeline.ingest import IngestError, ingest
    cfg = compose(["data=builtin", "data.corpus.num_songs=2", "+data.corpus.swing_amount=0.6",
                   f"paths.data_dir={tmp_path}"])
    with pytest.raises(IngestError, match="data.corpus: unknown option.*swing_amount"):
        ingest(cfg)
