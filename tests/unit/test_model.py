"""HierarchicalDrumModel: shapes, strict causality, incremental == full forward, generation,
checkpoint round trip, loss, and a tiny model overfitting one real Groove batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from common.config import compose
from train.model import HierarchicalDrumModel, ModelConfig, compute_loss, lookback_features, sample_hits, upgrade

torch.set_num_threads(1)

D, SPB, BPP = 5, 4, 2                 # tiny grid: a bar = 4 steps, a phrase = 2 bars

BACKENDS = {"gru": dict(rnn_type="gru"), "lstm": dict(rnn_type="lstm"),
            "transformer": dict(use_transformer=True, max_context=16)}

def tiny(backend: str, hierarchy: bool = True, **kw) -> HierarchicalDrumModel:
    torch.manual_seed(0)
    args = dict(num_drums=D, step_hidden_dim=16, bar_hidden_dim=12, phrase_hidden_dim=8,
                num_layers=2, dropout=0.1, steps_per_bar=SPB, bars_per_phrase=BPP, nhead=2,
                hierarchy=hierarchy, **BACKENDS[backend])
    args.update(kw)
    return HierarchicalDrumModel.from_config(args).double().eval()

def rolls(B: int, L: int, seed: int, p: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, L, D, generator=g, dtype=torch.float64) < p).double()

def assert_step_by_step_equals(m, x, state, full):
    """Generation's path (one `step` at a time from `state`) gives forward's outputs `full`."""
    inc = torch.stack([m.step(x[:, t], state) for t in range(x.shape[1])], 1)
    torch.testing.assert_close(inc, full, rtol=0, atol=1e-10)

def perturbed_futures(x, every, seed):
    """(t, x with every step after t redrawn) for t = 0, every, 2·every, …: the causality probes."""
    g = torch.Generator().manual_seed(seed)
    for t in range(0, x.shape[1] - 1, every):
        y = x.clone()
        y[:, t + 1:] = torch.rand(y[:, t + 1:].shape, generator=g, dtype=y.dtype)
        yield t, y

OUTPUT_CASES = [(b, lb, "independent") for b in BACKENDS for lb in (0, 2)] + [
    ("gru", 2, "joint"), ("transformer", 0, "joint"), ("lstm", 2, "autoregressive"),
    ("transformer", 2, "autoregressive")]

@pytest.fixture(scope="module", params=OUTPUT_CASES, ids=lambda p: f"{p[0]}-lookback{p[1]}-{p[2]}")
def model(request):
    backend, lookback, output = request.param
    return tiny(backend, lookback_bars=lookback, output=output, head_hidden_dim=6)

@pytest.mark.parametrize("hierarchy", [True, False])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_shapes_at_each_level(backend, hierarchy):
    m = tiny(backend, hierarchy)
    for L in (3, 8, 21, 32):            # less than a bar, whole bars, ragged tail, whole phrases
        step_logits, bar_preds, phrase_preds = m(rolls(2, L, L))
        assert step_logits.shape == (2, L, D)
        if hierarchy:
            assert bar_preds.shape == (2, L // SPB, D)
            assert phrase_preds.shape == (2, L // (SPB * BPP), D)
        else:
            assert bar_preds is None and phrase_preds is None
    assert torch.isfinite(step_logits).all()

@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), start=st.integers(0, 3 * SPB), dense=st.booleans())
def test_future_steps_never_change_past_outputs(model, seed, start, dense):
    L = 2 * SPB * BPP + 3               # two phrases and a ragged tail
    x = rolls(2, L, seed)
    starts = torch.tensor([start, start + 1])
    base = model(x, start=starts)
    g = torch.Generator().manual_seed(seed + 1)
    for t in range(L - 1):
        y = x.clone()                   # perturb every step after t (values, not only flips)
        y[:, t + 1:] = torch.rand(y[:, t + 1:].shape, generator=g, dtype=y.dtype) * (1.0 if dense else 0.3)
        # the bar/phrase arguments hold the perturbed future too: they must be ignored
        out = model(y, bar=torch.rand(2, L // SPB, D, dtype=y.dtype), phrase=torch.ones(2, 2, D),
                    start=starts)
        torch.testing.assert_close(out[0][:, :t + 1], base[0][:, :t + 1], rtol=0, atol=1e-12)
        bars, phrases = (t + 1) // SPB, (t + 1) // (SPB * BPP)      # complete through step t
        torch.testing.assert_close(out[1][:, :bars], base[1][:, :bars], rtol=0, atol=1e-12)
        torch.testing.assert_close(out[2][:, :phrases], base[2][:, :phrases], rtol=0, atol=1e-12)
        # not vacuous: the perturbed step itself does feed the next prediction
        assert not torch.allclose(out[0][:, t + 1], base[0][:, t + 1])

def test_bar_state_reaches_steps_only_after_the_bar_completes():
    """Perturbing the *input embedding path* is one thing; check the bar context directly: the
    bar level's contribution to step t changes exactly at t = spb - 1 (bar 0 complete)."""
    m = tiny("gru")
    x = rolls(1, 3 * SPB, 3)
    with_bar = m(x)[0]
    with torch.no_grad():
        m.step_to_bar.bias.add_(1.0)    # changes every bar's state, nothing else
    changed = ~torch.isclose(m(x)[0], with_bar).all(-1)[0]
    assert changed.tolist() == [False] * (SPB - 1) + [True] * (2 * SPB + 1)

@pytest.mark.parametrize("lead", [0, 3])
@pytest.mark.parametrize("lookback", [0, 1, 2])
@pytest.mark.parametrize("hierarchy", [True, False])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_incremental_step_equals_full_forward(backend, hierarchy, lookback, lead):
    # max_context 6 < L: the ring-buffer cache must match the banded attention of forward;
    # lead 3: the windows start 3 steps into a bar (a partial first bar on the song's grid)
    m = tiny(backend, hierarchy, lookback_bars=lookback,
             **({"max_context": 6} if backend == "transformer" else {}))
    L = 3 * SPB * BPP + 2
    x = rolls(3, L, 11)
    x[:, 2 * SPB:3 * SPB] = x[:, SPB:2 * SPB]        # exact repeats: the lookback flags fire
    start = torch.tensor([0, SPB, 5 * SPB]) + lead   # one bar phase per generation batch
    full = m(x, start=start)[0]
    state = m.init_state(3, start=start)
    assert_step_by_step_equals(m, x, state, full)

@pytest.mark.parametrize("output", ["joint", "autoregressive"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_incremental_step_equals_full_forward_for_joint_heads(backend, output):
    m = tiny(backend, lookback_bars=2, output=output, head_hidden_dim=6,
             **({"max_context": 6} if backend == "transformer" else {}))
    L = 3 * SPB * BPP + 2
    x, start = rolls(2, L, 12), torch.tensor([3, 3 + SPB])
    full, _, _, z = m(x, start=start, return_hidden=True)
    assert full.shape == (2, L, m.head.num_params) and z.shape == (2, L, 16)
    state = m.init_state(2, start=start)
    inc, hid = zip(*(m.step(x[:, t], state, return_hidden=True) for t in range(L)))
    torch.testing.assert_close(torch.stack(inc, 1), full, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.stack(hid, 1), z, rtol=0, atol=1e-10)

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bar_in_phrase_position_is_song_aligned_and_incremental(backend):
    """phrase_position: the step read and the step predicted know their bar in the song's phrase
    (absolute position from `start`); one phrase later everything is the same, one bar later not."""
    m = tiny(backend, phrase_position=True, lookback_bars=1, **({"max_context": 6} if backend == "transformer" else {}))
    L = 2 * SPB * BPP + 3
    x, start = rolls(2, L, 13), torch.tensor([SPB + 1, 3 * SPB + 1])
    full = m(x, start=start)[0]
    state = m.init_state(2, start=start)
    assert_step_by_step_equals(m, x, state, full)
    torch.testing.assert_close(m(x, start=start + SPB * BPP)[0], full, rtol=0, atol=1e-12)
    assert not torch.allclose(m(x, start=start + SPB)[0], full)
    plain = tiny(backend, lookback_bars=1, **({"max_context": 6} if backend == "transformer" else {}))
    torch.testing.assert_close(plain(x, start=start + SPB)[0], plain(x, start=start)[0], rtol=0, atol=1e-12)

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_another_bar_length_per_call_is_causal_and_incremental(backend):
    """A 4-step-bar model reading 3-step bars (steps_per_bar=3, its position tables hold 6 rows):
    windows start mid-bar (start mod 3 = 2: a partial first bar on the song's grid, as a 12-step
    song cut at a 16-step stride), the incremental path equals forward, and nothing leaks back."""
    m = song_grid(backend, max_steps_per_bar=6)
    assert m.max_steps_per_bar == 6 and m.config["max_steps_per_bar"] == 6
    spb, L = 3, 3 * 3 * BPP + 2
    x, start = rolls(2, L, 31), torch.tensor([2, 2 + 3 * BPP])        # one bar and phrase phase
    full, bars, phrases = m(x, start=start, steps_per_bar=torch.tensor([spb, spb]))
    assert bars.shape[1] == (L + 2) // spb                              # the partial bar, then whole ones
    assert not torch.allclose(full, m(x, start=start)[0])               # the bar length is read
    state = m.init_state(2, start=start, steps_per_bar=spb)
    assert_step_by_step_equals(m, x, state, full)
    for t, y in perturbed_futures(x, every=2, seed=3):
        torch.testing.assert_close(m(y, start=start, steps_per_bar=spb)[0][:, :t + 1], full[:, :t + 1],
                                   rtol=0, atol=1e-12)
        done = (2 + t + 1) // spb                                        # bar slots complete through t
        torch.testing.assert_close(m(y, start=start, steps_per_bar=spb)[1][:, :done], bars[:, :done],
                                   rtol=0, atol=1e-12)
    greedy = m.generate(x[:, :5], 12, temperature=0, start=start, steps_per_bar=spb)
    logits = m(greedy, start=start, steps_per_bar=spb)[0]
    assert torch.equal(greedy[:, 5:], (logits[:, 4:-1] > 0).double())
    with pytest.raises(ValueError, match="bars of 1..6 steps"):
        m(x, steps_per_bar=7)
    with pytest.raises(ValueError, match="one meter"):
        m(x, steps_per_bar=torch.tensor([3, 4]))

def test_bar_loss_targets_follow_a_mid_bar_start():
    """compute_loss's bar term for windows starting 2 steps into a 3-step bar: bar slot k holds
    window steps 3k − 2 .. 3k; only whole slots inside the window are targets (slot 0 is not)."""
    x, preds = rolls(2, 19, 9), torch.randn(2, 7, D, dtype=torch.float64)   # slots 0..6: (19 + 2) // 3
    got = compute_loss((torch.zeros(2, 19, D), preds, None), {"step": x}, {"step": 0, "bar": 1, "phrase": 0},
                       steps_per_bar=3, bars_per_phrase=BPP, bar_lead=torch.tensor([2, 2]))[1]["bar"]
    slots = [x[:, 3 * k - 2:3 * k + 1].mean(1) for k in range(1, 7)]       # whole slots 1..6
    want = torch.stack([(torch.sigmoid(preds[:, k - 1]) - slots[k - 1]).pow(2).mean(-1) for k in range(1, 7)], 1)
    torch.testing.assert_close(got, want.mean())

def song_grid(backend: str, **kw) -> HierarchicalDrumModel:
    return tiny(backend, song_phrases=True, phrase_position=True, lookback_bars=1,
                **({"max_context": 6} if backend == "transformer" else {}), **kw)

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_song_phrases_are_causal_and_incremental(backend):
    m = song_grid(backend, output="joint")
    L = 3 * SPB * BPP + 1
    x = rolls(2, L, 21)
    start = torch.tensor([SPB, 3 * SPB])                 # one bar into a phrase (off = 1) for both rows
    full, bars, phrases = m(x, start=start)
    assert phrases.shape[1] == (L // SPB + 1) // BPP     # a partial first phrase, then whole ones
    state = m.init_state(2, start=start)
    assert_step_by_step_equals(m, x, state, full)
    for t, y in perturbed_futures(x, every=3, seed=2):
        out = m(y, start=start)
        torch.testing.assert_close(out[0][:, :t + 1], full[:, :t + 1], rtol=0, atol=1e-12)
        slots = ((t + 1) // SPB + 1) // BPP             # phrase slots complete through step t (off = 1)
        torch.testing.assert_close(out[2][:, :slots], phrases[:, :slots], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="share their phrase"):
        m.init_state(2, start=torch.tensor([0, SPB]))

def test_phrase_context_arrives_at_the_songs_phrase_ends():
    """A window starting one bar into a phrase: its first phrase context arrives after one bar
    (the song's phrase ends there), not after bpp bars as when phrases count from the window."""
    x = rolls(1, 3 * SPB, 3)
    for song_phrases, first in ((True, SPB - 1), (False, SPB * BPP - 1)):
        m = tiny("gru", song_phrases=song_phrases)
        before = m(x, start=torch.tensor([SPB]))[0]
        with torch.no_grad():
            m.bar_to_phrase.bias.add_(1.0)               # changes every phrase's state, nothing else
        changed = ~torch.isclose(m(x, start=torch.tensor([SPB]))[0], before).all(-1)[0]
        assert changed.tolist() == [False] * first + [True] * (3 * SPB - first)

def test_phrase_targets_follow_the_song_grid():
    B, L = 2, 3 * SPB * BPP
    step = rolls(B, L, 8)
    preds = (torch.zeros(B, L, D, dtype=torch.float64), None, torch.zeros(B, 3, D, dtype=torch.float64))
    off = torch.tensor([1, 0])
    _, terms = compute_loss(preds, {"step": step}, {"phrase": 1.0}, steps_per_bar=SPB, bars_per_phrase=BPP,
                            phrase_offset=off)
    hits = (step > 0).double()
    err = []                           # targets of preds 0, 1: slots 1, 2; row 0 (off 1) from bars 1, 3
    for b, slots in ((0, [(1 * SPB, 3 * SPB), (3 * SPB, 5 * SPB)]), (1, [(2 * SPB, 4 * SPB), (4 * SPB, 6 * SPB)])):
        for a, e in slots:
            err.append((0.5 - hits[b, a:e].mean(0)).pow(2).mean())
    torch.testing.assert_close(terms["phrase"], torch.stack(err).mean())

def test_lookback_features_read_one_and_two_bars_back():
    x = rolls(2, 3 * SPB + 1, 4)
    x[:, 2 * SPB] = x[:, SPB]                      # step 2·spb repeats one bar ago
    f = lookback_features(x, SPB, 2)               # [hits t+1−spb, flag 1, hits t+1−2spb, flag 2]
    assert f.shape == (2, 3 * SPB + 1, 2 * (D + 1))
    for t in range(3 * SPB + 1):
        for k, off in ((1, 0), (2, D + 1)):
            j = t + 1 - k * SPB
            want = x[:, j] if j >= 0 else torch.zeros(2, D, dtype=x.dtype)
            torch.testing.assert_close(f[:, t, off:off + D], want, rtol=0, atol=0)
            same = t - k * SPB >= 0 and bool((x[:, t] == x[:, t - k * SPB]).all(-1).all())
            assert bool((f[:, t, off + D] == 1).all()) == same
    assert f[:, 2 * SPB, D].eq(1).all()
    assert f[:, SPB - 1, D].eq(0).all()            # silent or not, nothing before the start repeats

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_generation_with_lookback_follows_forward(backend):
    m = tiny(backend, lookback_bars=2, max_context=5)
    start = torch.tensor([1, 1 + SPB])          # one bar phase per generation batch
    out = m.generate(rolls(2, 3, 2), 5 * SPB, temperature=0, seed=0, start=start)
    logits = m(out, start=start)[0]                 # 5 bars: the ring wraps around twice
    assert torch.equal(out[:, 3:], (logits[:, 2:-1] > 0).double())

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_generation_past_the_horizon_equals_the_bounded_forward(backend):
    """horizon_bars = 4 bars (phrase level: 2 phrases) on a 10-bar sequence: step by step, the bar
    and phrase levels are re-run over their last items once past the horizon, and every output
    equals the full pass; within the horizon (a training window) the bound changes nothing."""
    m = song_grid(backend, horizon_bars=4)
    L = 10 * SPB + 2
    x, start = rolls(2, L, 31), torch.tensor([SPB, 3 * SPB])      # phrase offset 1 for both rows
    full = m(x, start=start)[0]
    state = m.init_state(2, start=start)
    assert_step_by_step_equals(m, x, state, full)
    unbounded = song_grid(backend)
    short = 4 * SPB + SPB - 1      # bar 4 completes at step 5·SPB − 1: the first step it can differ
    torch.testing.assert_close(unbounded(x[:, :short], start=start)[0], m(x[:, :short], start=start)[0],
                               rtol=0, atol=1e-12)
    assert not torch.allclose(unbounded(x, start=start)[0], full)

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bar_and_phrase_levels_see_only_their_horizon(backend):
    """Bar k's prediction is the bar level run afresh over the inputs of bars k−W+1..k (W = 4),
    phrase j's over its last W // bpp = 2 phrase inputs: the same bounded context as a window of
    W bars in training, whatever came before."""
    m = tiny(backend, horizon_bars=4)
    x, seen = rolls(1, 9 * SPB, 32), {}
    hooks = [m.step_to_bar.register_forward_hook(lambda mod, i, o: seen.__setitem__("bar", o)),
             m.bar_to_phrase.register_forward_hook(lambda mod, i, o: seen.__setitem__("phrase", o))]
    _, bar_preds, phrase_preds = m(x)
    for h in hooks:
        h.remove()
    for k in range(9):
        alone = m.bar_rnn(seen["bar"][:, max(0, k - 3):k + 1])[:, -1]
        torch.testing.assert_close(bar_preds[:, k], m.bar_head(alone), rtol=0, atol=1e-12)
    for j in range(phrase_preds.shape[1]):
        alone = m.phrase_rnn(seen["phrase"][:, max(0, j - 1):j + 1])[:, -1]
        torch.testing.assert_close(phrase_preds[:, j], m.phrase_head(alone), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="horizon_bars"):
        tiny(backend, horizon_bars=-1)

def test_transformer_window_bounds_the_context():
    """Each layer sees max_context positions, so the receptive field is layers·(W−1)+1 steps."""
    m = tiny("transformer", hierarchy=False, max_context=4)     # 2 layers: field 7
    x = rolls(1, 24, 5)
    y = x.clone()
    y[:, :10] = 1 - y[:, :10]           # change steps 0..9 only
    torch.testing.assert_close(m(y)[0][:, 16:], m(x)[0][:, 16:], rtol=0, atol=1e-12)
    assert not torch.allclose(m(y)[0][:, 15], m(x)[0][:, 15])   # step 9 is within 7 of 15

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_generate_deterministic_binary_right_length(backend):
    m = tiny(backend, max_context=6)    # 40 steps > window: sliding context for the transformer
    prime = rolls(2, 7, 1)
    a = m.generate(prime, 40, seed=3)
    assert a.shape == (2, 47, D)
    torch.testing.assert_close(a[:, :7], prime.to(a.dtype))
    assert set(a[:, 7:].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, m.generate(prime, 40, seed=3))
    assert not torch.equal(a, m.generate(prime, 40, seed=4))
    assert 0 < a[:, 7:].mean() < 1

def test_generate_empty_prime_and_unbatched():
    m = tiny("gru")
    assert m.generate(None, 9, seed=0, batch_size=3).shape == (3, 9, D)
    assert m.generate(torch.zeros(2, 0, D), 5, seed=0).shape == (2, 5, D)
    assert m.generate(torch.zeros(0, D), 5, seed=0).shape == (5, D)
    assert m.generate(rolls(1, 4, 0)[0], 6, seed=0).shape == (10, D)
    assert m.training is False
    m.train()
    m.generate(None, 2, seed=0)
    assert m.training is True            # generate restores the mode it found
    with pytest.raises(ValueError, match="start_seq must be"):
        m.generate(torch.zeros(2, 3, D + 1), 2)

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_generated_steps_follow_the_forward_probabilities(backend):
    """Greedy generation (temperature 0) must pick exactly forward's argmax on its own output,
    with the bar phase given by `start` (as a window starting mid-song would have it)."""
    m = tiny(backend, max_context=5)
    start = torch.tensor([2, 7])
    out = m.generate(rolls(2, 3, 2), 30, temperature=0, seed=0, start=start)
    logits = m(out, start=start)[0]
    assert torch.equal(out[:, 3:], (logits[:, 2:-1] > 0).double())
    assert not torch.equal(out, m.generate(rolls(2, 3, 2), 30, temperature=0, seed=0))

def test_sample_hits_top_p_and_temperature():
    logits = torch.tensor([[4.0, -4.0, 0.0, 0.2]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hits(logits, 1.0, top_p=0.9, generator=g) for _ in range(400)])
    assert draws[:, 0, 0].eq(1).all() and draws[:, 0, 1].eq(0).all()   # p≈0.98 / 0.02: decided
    assert 0.35 < draws[:, 0, 2].mean() < 0.65                           # p = 0.5: still sampled
    assert torch.equal(sample_hits(logits, 0.0), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))

@pytest.mark.parametrize("backend", list(BACKENDS))
def test_checkpoint_round_trip(tmp_path, backend):
    m = tiny(backend, hierarchy=backend != "lstm")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict(), "model_config": m.config}, path)
    ckpt = torch.load(path, weights_only=True)
    m2 = HierarchicalDrumModel.from_config(ckpt["model_config"]).double().eval()
    m2.load_state_dict(ckpt["model"])
    assert m2.config == m.config
    x = rolls(2, 17, 4)
    for a, b in zip(m(x), m2(x)):
        assert (a is None and b is None) or torch.equal(a, b)

def test_embedding_std_scales_the_added_tables_and_1_keeps_torchs_draw():
    """embedding_std sets the init of every table added to a step's input or state (positions,
    bar in phrase, conditions); 1.0 leaves torch's own draw, so a seed builds the model it always did."""
    kw = dict(num_drums=5, step_hidden_dim=32, bar_hidden_dim=16, phrase_hidden_dim=16, num_layers=1,
              phrase_position=True, conditioning={"style": ["rock", "funk"]})
    torch.manual_seed(3)
    plain = HierarchicalDrumModel.from_config(kw)     # a checkpoint from before the key: 1.0 (upgrade)
    torch.manual_seed(3)
    one = HierarchicalDrumModel.from_config({**kw, "embedding_std": 1.0})
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), one.state_dict().values()))
    assert one.config == plain.config and one.config["embedding_std"] == 1.0
    torch.manual_seed(3)
    small = HierarchicalDrumModel.from_config({**kw, "embedding_std": 0.02})
    tables = [small.in_pos, small.out_pos, small.in_bar_pos, small.out_bar_pos, small.conditions["style"]]
    for table, big in zip(tables, [one.in_pos, one.out_pos, one.in_bar_pos, one.out_bar_pos, one.conditions["style"]]):
        assert 0.01 < table.weight.std().item() < 0.03 and big.weight.std().item() > 0.5
    rebuilt = HierarchicalDrumModel.from_config(small.config)
    assert rebuilt.config["embedding_std"] == 0.02

@pytest.mark.parametrize("name", ["gru", "lstm", "transformer"])
def test_hydra_model_configs_build(name):
    cfg = compose([f"model={name}", "model.hierarchy=false"])
    config = ModelConfig.from_hydra(cfg, 9)
    m = HierarchicalDrumModel(config)
    given = OmegaConf.to_container(cfg.model, resolve=True)
    assert all(getattr(config, k) == v for k, v in given.items()
               if k not in ("steps_per_bar", "bars_per_phrase", "max_steps_per_bar", "horizon_bars", "conditioning"))
    # conditioning off (model.conditioning: []): its options are stored neutral, as a checkpoint
    # from before they existed reads (upgrade)
    assert m.config["conditioning"] == {} and m.config["bpm_buckets"] == [] and m.config["cond_dropout"] == 0.0
    assert m.config == upgrade(m.config).to_dict() and m.steps_per_bar == cfg.window.steps_per_bar
    assert m.horizon_bars == cfg.window.seq_len // cfg.window.steps_per_bar     # null: the window's bars
    assert m.use_transformer == (name == "transformer") and not m.hierarchy

def test_drums_rnn_config_is_the_peer_baseline():
    """model=drums_rnn: 3-layer LSTM of 256, joint 512-way output, no lookback, no hierarchy."""
    cfg = compose(["model=drums_rnn"])
    m = HierarchicalDrumModel(ModelConfig.from_hydra(cfg, 9))
    assert m.step_rnn.rnn.num_layers == 3 and m.step_rnn.rnn.hidden_size == 256
    assert isinstance(m.step_rnn.rnn, torch.nn.LSTM) and not m.hierarchy and m.lookback_bars == 0
    assert m.head.output == "joint" and m.output_layer[-1].out_features == 512
    x = rolls(1, 20, 3)[..., :1].expand(1, 20, 9).float().contiguous()
    assert m(x)[0].shape == (1, 20, 512)

def test_groove_cpu_experiment_composes():
    cfg = compose(["+experiment=groove_cpu"])
    assert cfg.model.output == "autoregressive" and cfg.paths.ready == "data/groove/ready"
    assert cfg.model.song_phrases and cfg.model.phrase_position and cfg.trainer.early_stopping.patience == 2
    assert cfg.generate.temperature == cfg.evaluate.generated.temperature == 0.98   # the 3-seed sweep's choice
    assert cfg.model.dropout == 0.2
    assert cfg.trainer.limit_train_batches == -1 and cfg.window.stride % cfg.window.steps_per_bar == 0

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "experiment").glob("*.yaml"))

@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(name):
    """Every row of docs/results.md is an experiment config: each composes and builds its model."""
    cfg = compose([f"+experiment={name}"])
    assert cfg.trainer.run_name == name
    names = cfg.model.get("conditioning") or []       # the trainer fills the vocabularies from the export
    data = {"conditioning": {c: ["a", "b"] for c in names}} if names else {}
    with torch.device("meta"):
        m = HierarchicalDrumModel(ModelConfig.from_hydra(cfg, 9, **data))   # an unknown key: ConfigError
    assert m.context_input == (name.endswith("_full") or name == "groove_context")
    assert m.hierarchy == ("flat" not in name)
    conditioned_groove = name in ("groove_cond", "groove_context", "groove_full")   # guided to the style asked
    for config, key in (("generate", "generate.guidance"), ("style_classifier", "style_classifier.guidance")):
        sampling = compose([f"+experiment={name}"], config_name=config)
        assert OmegaConf.select(sampling, key) == (3.0 if conditioned_groove else 1.0), (config, key)

def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="rnn_type"):
        ModelConfig(9, rnn_type="rnn")
    with pytest.raises(ValueError, match=r"step must be \[B, L, 9\]"):
        HierarchicalDrumModel(ModelConfig(9))(torch.zeros(2, 16, 8))
    with pytest.raises(ValueError, match="divisible by nhead"):
        ModelConfig(9, step_hidden_dim=30, use_transformer=True, nhead=4)
    with pytest.raises(TypeError, match="from_config"):
        HierarchicalDrumModel({"num_drums": 9})

def test_compute_loss_values_mask_and_weights():
    torch.manual_seed(1)
    B, L = 2, 2 * SPB * BPP
    step = rolls(B, L, 7) * 0.8          # velocities/127-like: targets are hits (> 0)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, L - SPB - 1:] = False        # row 1: padded tail from inside bar 2
    preds = (torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L // SPB, D, dtype=torch.float64),
             torch.randn(B, 2, D, dtype=torch.float64))
    batch = {"step": step, "mask": mask}
    total, terms = compute_loss(preds, batch, {"step": 1.0, "bar": 0.5, "phrase": 2.0},
                                steps_per_bar=SPB, bars_per_phrase=BPP)
    hits = (step > 0).double()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(preds[0][:, :-1], hits[:, 1:],
                                                               reduction="none").sum(-1) / math.log(2)
    want_step = bce[mask[:, 1:]].mean()
    bar_means = hits.reshape(B, L // SPB, SPB, D).mean(2)
    err = (torch.sigmoid(preds[1][:, :-1]) - bar_means[:, 1:]).pow(2).mean(-1)  # [B, 3]
    want_bar = torch.cat([err[0], err[1, :1]]).mean()    # row 1: bars 2, 3 are not all real
    ph_means = hits.reshape(B, 2, SPB * BPP, D).mean(2)
    want_phrase = (torch.sigmoid(preds[2][0, 0]) - ph_means[0, 1]).pow(2).mean()
    torch.testing.assert_close(terms["step"], want_step)
    torch.testing.assert_close(terms["bar"], want_bar)
    torch.testing.assert_close(terms["phrase"], want_phrase)
    torch.testing.assert_close(total, want_step + 0.5 * want_bar + 2.0 * want_phrase)

    padded = dict(batch, step=torch.where(mask[..., None], step, torch.ones_like(step)))
    torch.testing.assert_close(compute_loss(preds, padded, steps_per_bar=SPB, bars_per_phrase=BPP)[0],
                               compute_loss(preds, batch, steps_per_bar=SPB, bars_per_phrase=BPP)[0])
    only_step, _ = compute_loss(preds, batch, {"bar": 0, "phrase": 0}, steps_per_bar=SPB, bars_per_phrase=BPP)
    torch.testing.assert_close(only_step, want_step)
    bce_total, bce_terms = compute_loss(preds, batch, level_loss="bce", steps_per_bar=SPB, bars_per_phrase=BPP)
    assert bce_terms["bar"] > terms["bar"]
    with pytest.raises(ValueError, match="level_loss"):
        compute_loss(preds, batch, level_loss="l1")

def test_flat_model_loss_reports_zero_levels():
    m = tiny("gru", hierarchy=False)
    x = rolls(2, 16, 0)
    total, terms = m.compute_loss(m(x), {"step": x})
    assert terms["bar"] == 0 and terms["phrase"] == 0
    torch.testing.assert_close(total, terms["step"])
    total.backward()
    assert m.input.weight.grad.abs().sum() > 0

def test_zero_weights_keep_every_parameter_in_the_graph():
    """DDP without find_unused_parameters needs a gradient (zero is fine) for every parameter."""
    m = tiny("transformer")
    x = rolls(2, 2 * SPB * BPP, 1)
    total, _ = m.compute_loss(m(x), {"step": x}, {"bar": 0.0, "phrase": 0.0})
    total.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.bar_head.weight.grad.abs().sum() == 0 and m.phrase_head.weight.grad.abs().sum() == 0
    assert m.input.weight.grad.abs().sum() > 0

@pytest.mark.parametrize("lead", [0, 3])
@pytest.mark.parametrize("backend", ["gru", "lstm"])
def test_bar_context_in_the_step_input_is_causal_and_incremental(backend, lead):
    """context_input: the steps of bar k read bar k−1's state in their input. Forward (the step
    RNN run bar by bar) equals generation step by step, also past a 4-bar horizon; no future leaks."""
    m = song_grid(backend, context_input=True, horizon_bars=4)
    L = 6 * SPB + 2
    x, start = rolls(2, L, 41), torch.tensor([SPB, 3 * SPB]) + lead
    full, bars, phrases = m(x, start=start)
    assert bars.shape[1] == (L + lead) // SPB
    state = m.init_state(2, start=start)
    assert_step_by_step_equals(m, x, state, full)
    for t, y in perturbed_futures(x, every=5, seed=3):
        torch.testing.assert_close(m(y, start=start)[0][:, :t + 1], full[:, :t + 1], rtol=0, atol=1e-12)
    out = m.generate(x[:, :3], 3 * SPB, temperature=0, seed=0, start=start)
    assert torch.equal(out[:, 3:], (m(out, start=start)[0][:, 2:-1] > 0).double())
    mixed = torch.tensor([SPB, 3 * SPB + 1])             # rows of two bar phases: run as two groups
    together = m(x, start=mixed)
    assert together[1].shape[1] == (L + 1) // SPB        # the slots of pool_bars: row 0's last is partial
    for row in range(2):
        alone = m(x[row:row + 1], start=mixed[row:row + 1])
        for got, want in zip(together, alone):          # step logits, bar and phrase predictions
            torch.testing.assert_close(got[row:row + 1, :want.shape[1]], want, rtol=0, atol=1e-12)

def test_bar_context_enters_the_step_input_at_the_next_bar():
    """The input path: changing only bar_to_input moves the outputs from the first step of bar 1
    on (its input reads bar 0), one step after bar 0's context reaches the output (bar_to_step)."""
    m = tiny("gru", context_input=True)
    x = rolls(1, 3 * SPB, 3)
    before = m(x)[0]
    with torch.no_grad():
        m.bar_to_input.weight.add_(1.0)    # bar_start is zero: bar 0's steps read only the bias
    changed = ~torch.isclose(m(x)[0], before).all(-1)[0]
    assert changed.tolist() == [False] * SPB + [True] * (2 * SPB)
    plain = tiny("gru").config         # a checkpoint from before the key reads as off (upgrade)
    assert upgrade({k: v for k, v in plain.items() if k != "context_input"}).to_dict() == plain
    with pytest.raises(ValueError, match="recurrent step level"):
        tiny("transformer", context_input=True)
