"""Output heads (train/model/heads.py): each a proper distribution over whole drum vectors,
one loss definition, decoding (temperature, top-k, top-p) on hand-made distributions, seeds."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train.model.heads import (AutoregressiveHead, IndependentHead, JointHead, bit_table, class_index,
                                  decode_joint, make_head)
from train.model import HierarchicalDrumModel, compute_loss

torch.set_num_threads(1)
D = 4


def head_and_params(output: str, seed: int, n: int = 3):
    torch.manual_seed(seed)
    head = make_head(output, D, hidden_dim=5).double()
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)                  # strong conditionals: drums clearly dependent
    return head, torch.randn(n, head.num_params, dtype=torch.float64) * 2


@settings(max_examples=10, deadline=None)
@given(output=st.sampled_from(["independent", "joint", "autoregressive"]), seed=st.integers(0, 1000))
def test_each_head_is_a_distribution_over_drum_vectors(output, seed):
    head, params = head_and_params(output, seed)
    joint = head.joint_log_probs(params)                              # [3, 16]
    torch.testing.assert_close(joint.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    vectors = bit_table(D, params)
    for c in range(2 ** D):                                            # log_prob agrees with the table
        lp = head.log_prob(params, vectors[c].expand(3, D))
        torch.testing.assert_close(lp, joint[:, c])
    torch.testing.assert_close(head.marginals(params), joint.exp() @ vectors)


def test_class_index_and_bit_table_agree():
    x = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert class_index(x).tolist() == [9, 0, 15]
    assert bit_table(D, torch.zeros(1))[9].tolist() == [1, 0, 0, 1]


def test_joint_head_can_say_never_together():
    """What independent drums cannot: p(kick) = p(snare) = 1/2 yet never both, never neither."""
    logits = torch.full((1, 2 ** 2), -1e4, dtype=torch.float64)
    logits[0, [1, 2]] = 0.0                                            # only 'kick' or 'snare'
    head = JointHead(2)
    torch.testing.assert_close(head.marginals(logits), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    draws = head.sample(logits.expand(500, -1), g)
    assert (draws.sum(-1) == 1).all()                                 # exactly one of the two, always
    assert 0.4 < draws[:, 0].mean() < 0.6


def test_autoregressive_ancestral_sampling_matches_its_joint():
    head, params = head_and_params("autoregressive", 3, n=1)
    g = torch.Generator().manual_seed(1)
    draws = head.sample(params.expand(6000, -1), g)                   # T = 1: drum by drum
    freq = torch.bincount(class_index(draws), minlength=2 ** D).double() / 6000
    want = head.joint_log_probs(params)[0].exp()
    assert (freq - want).abs().max() < 0.03, (freq, want)


def test_loss_is_bits_per_step_of_the_whole_vector_for_every_head():
    step = (torch.rand(2, 9, D, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    for output in ("independent", "joint", "autoregressive"):
        head, _ = head_and_params(output, 1)
        params = torch.randn(2, 9, head.num_params, dtype=torch.float64)
        _, terms = compute_loss((params, None, None), {"step": step}, head=head)
        table = head.joint_log_probs(params[:, :-1])
        want = -table.gather(-1, class_index(step[:, 1:])[..., None]).mean() / math.log(2)
        torch.testing.assert_close(terms["step"], want)


def test_heads_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="D ≤ 10"):
        JointHead(11)
    with pytest.raises(ValueError, match="output must be one of"):
        make_head("softmax", 4)
    with pytest.raises(ValueError, match="output must be one of"):
        HierarchicalDrumModel.from_config(dict(num_drums=4, output="mixture"))
    with pytest.raises(ValueError, match="top_p must be in"):
        IndependentHead(3).sample(torch.zeros(1, 3), top_p=1.5)
    with pytest.raises(ValueError, match="D ≤ 12"):
        AutoregressiveHead(13, 4).sample(torch.zeros(1, 17), top_k=3)
    big = AutoregressiveHead(13, 4)                                  # any D: plain sampling works
    assert big.sample(torch.zeros(2, 17), torch.Generator().manual_seed(0)).shape == (2, 13)


# ----------------------------------------------------------------------------- decoding
HAND = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))


def draw(n: int, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return decode_joint(HAND.expand(n, -1), g, **kw)


def test_top_k_keeps_the_k_likeliest_renormalised():
    c = draw(4000, top_k=2)
    assert set(c.tolist()) == {0, 1}
    assert abs((c == 0).double().mean() - 0.5 / 0.8) < 0.03         # 0.625 after renormalising


def test_top_p_keeps_the_smallest_nucleus():
    assert set(draw(2000, top_p=0.49).tolist()) == {0}                # 0.5 alone reaches 0.49
    c = draw(4000, top_p=0.79)                                        # 0.5 + 0.3 reaches 0.79
    assert set(c.tolist()) == {0, 1}
    assert abs((c == 0).double().mean() - 0.5 / 0.8) < 0.03
    assert set(draw(4000, top_p=0.81).tolist()) == {0, 1, 2}
    assert set(draw(8000, top_p=1.0).tolist()) == {0, 1, 2, 3}


def test_temperature_sharpens_and_zero_is_greedy():
    assert set(draw(50, temperature=0).tolist()) == {0}
    cold = (draw(4000, temperature=0.5) == 0).double().mean()         # 0.25/(0.25+0.09+...) ≈ 0.71
    assert abs(cold - 0.25 / (0.25 + 0.09 + 0.0225 + 0.0025)) < 0.03


def test_decoding_is_reproducible_by_seed():
    a, b, c = draw(200, seed=5, top_p=0.9), draw(200, seed=5, top_p=0.9), draw(200, seed=6, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("output", ["independent", "joint", "autoregressive"])
def test_generation_reproducible_and_greedy_is_the_joint_argmax(output):
    torch.manual_seed(0)
    m = HierarchicalDrumModel.from_config(dict(num_drums=D, step_hidden_dim=8, bar_hidden_dim=8, phrase_hidden_dim=8,
                                                num_layers=1, steps_per_bar=4, bars_per_phrase=2, output=output,
                                                head_hidden_dim=5)).double().eval()
    prime = (torch.rand(2, 3, D) < 0.5).double()
    a = m.generate(prime, 20, seed=1, top_k=5, top_p=0.9, temperature=0.8)
    assert torch.equal(a, m.generate(prime, 20, seed=1, top_k=5, top_p=0.9, temperature=0.8))
    assert not torch.equal(a, m.generate(prime, 20, seed=2, top_k=5, top_p=0.9, temperature=0.8))
    greedy = m.generate(prime, 12, temperature=0)
    best = m.head.joint_log_probs(m(greedy)[0][:, 2:-1]).argmax(-1)
    assert torch.equal(class_index(greedy[:, 3:]), best)
