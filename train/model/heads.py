"""Output heads: the distribution of a step's whole drum vector x ∈ {0,1}^D given the step-level state.

The model's output layer maps the step-level hidden state z_t to a head's parameters
`params` [..., num_params]; the head turns them into p(x | z_t). Three heads, one contract:

- `independent`: params = D logits l; p(x) = Π_d σ(l_d)^x_d σ(−l_d)^(1−x_d) (per-drum Bernoullis).
- `joint`: params = 2^D logits over the drum combinations (class c = Σ_d x_d·2^d, as Magenta's
  DrumsRNN's 512 classes for 9 drums); p(x) = softmax(params)[c(x)]. Only for D ≤ JOINT_MAX_DRUMS.
- `autoregressive`: NADE (Larochelle & Murray, 2011) conditioned on z: params = [b (D) ; c (Hn)],
  h_d = σ(c + Σ_{i<d} x_i·V_i), p(x_d = 1 | x_<d) = σ(b_d + W_d·h_d); any D, one pass under
  teacher forcing (a cumulative sum), D small steps to sample.

All heads give `log_prob(params, x)` in nats (the loss: −log2 p(x) bits per step, the same
definition for all three), `marginals(params)` (p(x_d = 1), for onset scores and the reward
surrogate), `joint_log_probs(params)` (every one of the 2^D vectors, D ≤ ENUM_MAX_DRUMS) and
`sample(params, ...)`: decoding over the joint step event (temperature, top-k, nucleus top-p;
`decode_joint`). The heads only see the step-level state through `params`, so other heads
(velocity, timing) can read the same hidden state beside them.

`model.output` names a head in `HEADS`; a class joins it with `@register` (its `output` name).
Nothing else in the code base lists the heads: the model, its config check, loss, scoring and
generation all go through the head's methods (docs/model.md, "Adding an output head").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS: dict[str, type["StepHead"]] = {}     # model.output -> head class (`register`)
JOINT_MAX_DRUMS = 10     # a 2^D-way softmax: 1,024 classes at most
ENUM_MAX_DRUMS = 12      # decoding and AR marginals enumerate the 2^D vectors up to here


def bit_table(num_drums: int, like: Tensor) -> Tensor:
    """[2^D, D]: row c holds the drum vector of class c (drum d = bit d of c)."""
    c = torch.arange(2 ** num_drums, device=like.device)
    return ((c[:, None] >> torch.arange(num_drums, device=like.device)) & 1).to(like.dtype)


def class_index(x: Tensor) -> Tensor:
    """Class c = Σ_d 1[x_d > 0]·2^d of drum vectors x [..., D] (long)."""
    powers = 2 ** torch.arange(x.shape[-1], device=x.device)
    return ((x > 0).long() * powers).sum(-1)


def decode_joint(log_probs: Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """One class per row of `log_probs` [B, C] (log p of each joint event).

    temperature ≤ 0: the most likely class. Else p_T ∝ p^(1/T); top_k keeps the k likeliest classes;
    top_p (nucleus; Holtzman et al. 2020) keeps the smallest set of likeliest classes whose p_T mass
    reaches top_p (at least one); the kept classes are renormalised and one is drawn with
    `generator` (the only randomness, so a seed reproduces it). Returns [B] long."""
    if temperature <= 0:
        return log_probs.argmax(-1)
    logits = log_probs.double() / temperature
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = logits.softmax(-1).sort(-1, descending=True)
        before = probs.cumsum(-1) - probs                  # mass of the likelier classes
        drop = before >= top_p                             # already reached: the first stays
        logits = logits.scatter(-1, order, logits.gather(-1, order).masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _check_decoding(temperature: float, top_k, top_p) -> None:
    if top_k is not None and int(top_k) < 0:
        raise ValueError(f"top_k must be ≥ 0 (0 or None = off), got {top_k}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (None = off), got {top_p}")


class StepHead(nn.Module):
    """The shared interface (see the module docstring)."""

    output = ""

    def __init__(self, num_drums: int):
        super().__init__()
        self.num_drums = int(num_drums)

    num_params: int

    @classmethod
    def build(cls, num_drums: int, hidden_dim: int) -> "StepHead":
        """The head of a model with `num_drums` drums (`hidden_dim`: model.head_hidden_dim)."""
        return cls(num_drums)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:       # [...] nats
        raise NotImplementedError

    def joint_log_probs(self, params: Tensor) -> Tensor:           # [..., 2^D]
        raise NotImplementedError

    def marginals(self, params: Tensor) -> Tensor:                 # [..., D]
        return self.joint_log_probs(params).exp() @ bit_table(self.num_drums, params)

    def _enumerable(self, what: str) -> None:
        if self.num_drums > ENUM_MAX_DRUMS:
            raise ValueError(f"{what} enumerates the 2^{self.num_drums} drum vectors; only "
                             f"D ≤ {ENUM_MAX_DRUMS} drums")

    def sample_guided(self, params: Tensor, params_none: Tensor, scale: float,
                      generator: torch.Generator | None = None, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Drum vectors [B, D] drawn with classifier-free guidance (Ho & Salimans, 2022) over the
        joint step event: log p_g(x) = log p(x | none) + scale · (log p(x | c) − log p(x | none)),
        renormalised, then decoded as `sample` does. `params` are given the condition c,
        `params_none` the same state with every condition none; scale 1 is p(x | c) itself."""
        _check_decoding(temperature, top_k, top_p)
        self._enumerable("guided decoding")
        cond, none = self.joint_log_probs(params), self.joint_log_probs(params_none)
        guided = (none + float(scale) * (cond - none)).log_softmax(-1)
        return bit_table(self.num_drums, params)[decode_joint(guided, generator, temperature, top_k, top_p)]

    def sample(self, params: Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Drum vectors [B, D] (0/1) drawn from p(x) decoded by `decode_joint`."""
        _check_decoding(temperature, top_k, top_p)
        self._enumerable(f"{self.output} decoding")
        c = decode_joint(self.joint_log_probs(params), generator, temperature, top_k, top_p)
        return bit_table(self.num_drums, params)[c]


def register(cls: type[StepHead]) -> type[StepHead]:
    """Class decorator: `model.output=<cls.output>` builds this head."""
    HEADS[cls.output] = cls
    return cls


@register
class IndependentHead(StepHead):
    """D Bernoullis; the loss equals the summed per-drum BCE (in bits)."""

    output = "independent"

    def __init__(self, num_drums: int):
        super().__init__(num_drums)
        self.num_params = self.num_drums

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params, (x > 0).to(params.dtype), reduction="none").sum(-1)

    def joint_log_probs(self, params: Tensor) -> Tensor:
        self._enumerable("joint_log_probs")
        # log p(c) = Σ_d log σ(−l_d) + Σ_d bit_d(c)·l_d, since log σ(l) − log σ(−l) = l
        return F.logsigmoid(-params).sum(-1, keepdim=True) + params @ bit_table(self.num_drums, params).T

    def marginals(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params, generator=None, temperature=1.0, top_k=None, top_p=None):
        if not top_k and top_p is None:
            # per-drum Bernoullis: the same distribution as the joint draw (p^(1/T) factorises)
            return sample_bernoulli(params, temperature, generator)
        return super().sample(params, generator, temperature, top_k, top_p)


@register
class JointHead(StepHead):
    """A 2^D-way softmax over drum combinations."""

    output = "joint"

    def __init__(self, num_drums: int):
        super().__init__(num_drums)
        if self.num_drums > JOINT_MAX_DRUMS:
            raise ValueError(f"output=joint is a 2^D-way softmax, for D ≤ {JOINT_MAX_DRUMS} drums; "
                             f"got D={num_drums} (use output=autoregressive)")
        self.num_params = 2 ** self.num_drums

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return params.log_softmax(-1).gather(-1, class_index(x)[..., None])[..., 0]

    def joint_log_probs(self, params: Tensor) -> Tensor:
        return params.log_softmax(-1)

    def sample(self, params, generator=None, temperature=1.0, top_k=None, top_p=None):
        _check_decoding(temperature, top_k, top_p)
        c = decode_joint(params.log_softmax(-1), generator, temperature, top_k, top_p)
        return bit_table(self.num_drums, params)[c]


@register
class AutoregressiveHead(StepHead):
    """NADE over the drums in index order, its biases b and c given by the step-level state."""

    output = "autoregressive"

    def __init__(self, num_drums: int, hidden_dim: int = 64):
        super().__init__(num_drums)
        self.hidden_dim = int(hidden_dim)
        if self.hidden_dim < 1:
            raise ValueError(f"head_hidden_dim must be ≥ 1 for output=autoregressive, got {hidden_dim}")
        self.num_params = self.num_drums + self.hidden_dim
        scale = 1.0 / math.sqrt(self.hidden_dim)
        self.V = nn.Parameter(torch.randn(self.num_drums, self.hidden_dim) * scale)   # x_i -> hidden
        self.W = nn.Parameter(torch.randn(self.num_drums, self.hidden_dim) * scale)   # hidden -> x_d

    @classmethod
    def build(cls, num_drums: int, hidden_dim: int) -> "AutoregressiveHead":
        return cls(num_drums, hidden_dim)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(b, c, V, W), V and W in the dtype of params (evaluate scores float32 models in float64)."""
        return (params[..., :self.num_drums], params[..., self.num_drums:], self.V.to(params.dtype),
                self.W.to(params.dtype))

    def conditional_logits(self, params: Tensor, x: Tensor) -> Tensor:
        """logit of p(x_d = 1 | x_<d) for every d [..., D], teacher-forced with x [..., D]."""
        b, c, V, W = self._split(params)
        contrib = (x > 0).to(params.dtype)[..., None] * V                      # [..., D, Hn]
        before = contrib.cumsum(-2) - contrib                                  # Σ_{i<d}
        h = torch.sigmoid(c[..., None, :] + before)
        return b + (h * W).sum(-1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits = self.conditional_logits(params, x)
        return -F.binary_cross_entropy_with_logits(logits, (x > 0).to(logits.dtype), reduction="none").sum(-1)

    def joint_log_probs(self, params: Tensor) -> Tensor:
        """Every vector's log p by walking the binary tree drum by drum: the 2^d prefixes of depth d
        share their hidden sums, so the cost is ~2^D·Hn per position, not 2^D·D·Hn."""
        self._enumerable("joint_log_probs")
        b, c, V, W = self._split(params)
        shape = params.shape[:-1]
        b, a = b.reshape(-1, self.num_drums), c.reshape(-1, 1, self.hidden_dim)
        logp = params.new_zeros(a.shape[0], 1)
        for d in range(self.num_drums):
            logit = b[:, d:d + 1] + torch.sigmoid(a) @ W[d]                    # [N, 2^d]
            logp = torch.cat([logp + F.logsigmoid(-logit), logp + F.logsigmoid(logit)], 1)
            if d + 1 < self.num_drums:                                        # bit d: index + 2^d
                a = torch.cat([a, a + V[d]], 1)
        return logp.reshape(*shape, 2 ** self.num_drums)

    def sample(self, params, generator=None, temperature=1.0, top_k=None, top_p=None):
        if top_k or top_p is not None or temperature != 1.0:
            if self.num_drums <= ENUM_MAX_DRUMS:
                return super().sample(params, generator, temperature, top_k, top_p)
            if top_k or top_p is not None:
                self._enumerable("top-k / top-p decoding")
        return self._ancestral(params, generator, temperature)

    def _ancestral(self, params: Tensor, generator, temperature: float) -> Tensor:
        """Drum by drum; temperature (D > ENUM_MAX_DRUMS only) then applies to each conditional."""
        b, a, V, W = self._split(params)
        x = params.new_zeros(params.shape[0], self.num_drums)
        for d in range(self.num_drums):
            logit = b[:, d] + torch.sigmoid(a) @ W[d]
            x[:, d] = sample_bernoulli(logit, temperature, generator)
            a = a + x[:, d:d + 1] * V[d]
        return x


def sample_bernoulli(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
                     top_p: float | None = None) -> Tensor:
    """Independent Bernoullis p = σ(logits / temperature); temperature ≤ 0 is greedy (p > 0.5).
    top_p per drum over its two outcomes: where the likelier one alone has p ≥ top_p it is taken."""
    if temperature <= 0:
        return (logits > 0).to(logits.dtype)
    p = torch.sigmoid(logits / temperature)
    if top_p is not None:
        p = torch.where(torch.maximum(p, 1 - p) >= top_p, (p >= 0.5).to(p.dtype), p)
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def make_head(output: str, num_drums: int, hidden_dim: int = 64) -> StepHead:
    if output not in HEADS:
        raise ValueError(f"output must be one of {tuple(HEADS)}, got {output!r}")
    return HEADS[output].build(num_drums, hidden_dim)
