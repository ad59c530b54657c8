"""The step → bar → phrase drum model, its loss, and incremental generation (see docs/model.md).

Shapes: B batch, L steps, D drums, spb = steps_per_bar, bpp = bars_per_phrase,
nb = L // spb complete bars, nph = nb // bpp complete phrases. Bars lie on the song's grid: a
window whose `start` is not a bar line (a 12-step song cut at a 16-step stride) begins with the
partial bar it starts in (lead = start mod spb steps of it lie before the window); with lead 0
(every window of a 16-step model at a whole-bar stride) bars are counted from the first step.
The musical phase of each step comes from `start` through the position-in-bar embeddings. The bar
length is per call (`steps_per_bar=`, default the model's): one model reads every meter whose bar
fits its position tables (`max_steps_per_bar`).

Causality: `step_logits[:, t]` (hits of step t+1) depends only on `step[:, :t+1]`;
`bar_preds[:, k]` (mean pattern of bar k+1) only on bars ≤ k; `phrase_preds[:, j]` likewise.
The lookback input of step t (K = lookback_bars) reads step[t+1−k·spb] and step[t−k·spb] for
k = 1..K, all ≤ t, so it keeps this causality.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.training.heads import OUTPUTS, IndependentHead, StepHead, make_head, sample_bernoulli

RNN_TYPES = ("gru", "lstm")
DEFAULT_LOSS_WEIGHTS = {"step": 1.0, "bar": 0.5, "phrase": 0.25}
LEVEL_LOSSES = ("mse", "bce")


# --------------------------------------------------------------------------- sequence levels
class RecurrentLevel(nn.Module):
    """A GRU/LSTM over one level's sequence; `step` advances it by one item with a carried state."""

    def __init__(self, dim: int, num_layers: int, dropout: float, rnn_type: str):
        super().__init__()
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[rnn_type]
        self.rnn = rnn_cls(dim, dim, num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: Tensor) -> Tensor:           # [B, T, dim] -> [B, T, dim]
        return self.rnn(x)[0]

    def run(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:    # a chunk [B, T, dim] from `state`
        return self.rnn(x, state)

    def init_state(self, batch_size: int, like: Tensor) -> Any:
        return None                                     # zeros, as in forward

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:   # [B, dim]
        y, state = self.rnn(x[:, None], state)
        return y[:, 0], state


def alibi_slopes(nhead: int) -> Tensor:
    """ALiBi (Press et al., 2022): head h adds -slope_h · distance to its attention scores,
    slope_h = 2^(-8(h+1)/nhead). Relative, so a sliding window needs no position table."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / nhead) for h in range(nhead)])


class CausalBlock(nn.Module):
    """Pre-LayerNorm Transformer block with causal self-attention (bias carries mask + ALiBi)."""

    def __init__(self, dim: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.dropout = nhead, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        return tuple(a.view(B, T, self.nhead, C // self.nhead).transpose(1, 2) for a in (q, k, v))

    def _finish(self, x: Tensor, att: Tensor) -> Tensor:
        B, T, C = x.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, T, C)))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:      # bias [h, T, T]
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p))

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, bias: Tensor) -> Tensor:
        """x [B, 1, C]; writes this position's key/value into ring slot `slot`, attends the ring."""
        q, k, v = self._heads(x)
        k_cache[:, :, slot] = k[:, :, 0]
        v_cache[:, :, slot] = v[:, :, 0]
        return self._finish(x, F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=bias))


class TransformerLevel(nn.Module):
    """Causal Transformer over one level; each position attends to the last `window` positions
    (itself included). `step` keeps a ring-buffer key/value cache of exactly `window` slots, so
    every incremental step costs the same however long the sequence has grown."""

    def __init__(self, dim: int, num_layers: int, nhead: int, dropout: float, window: int):
        super().__init__()
        self.window, self.nhead, self.dim = window, nhead, dim
        self.blocks = nn.ModuleList(CausalBlock(dim, nhead, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(dim)
        self.register_buffer("slopes", alibi_slopes(nhead), persistent=False)

    def _bias(self, dist: Tensor, dtype: torch.dtype) -> Tensor:
        bias = -self.slopes.to(dtype)[:, None, None] * dist.to(dtype)
        return bias.masked_fill((dist < 0) | (dist >= self.window), float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        bias = self._bias(pos[:, None] - pos[None, :], x.dtype)          # [h, T, T]
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_f(x)

    def init_state(self, batch_size: int, like: Tensor) -> dict:
        shape = (batch_size, self.nhead, self.window, self.dim // self.nhead)
        return {"n": 0,
                # positions held by each ring slot; far in the past = empty (masked out)
                "pos": torch.full((self.window,), -(2 ** 40), dtype=torch.long, device=like.device),
                "k": [like.new_zeros(shape) for _ in self.blocks],
                "v": [like.new_zeros(shape) for _ in self.blocks]}

    def step(self, x: Tensor, state: dict) -> tuple[Tensor, dict]:
        n, slot = state["n"], state["n"] % self.window
        state["pos"][slot] = n
        bias = self._bias(n - state["pos"], x.dtype)[None]            # [1, h, 1, W]
        y = x[:, None]
        for block, k, v in zip(self.blocks, state["k"], state["v"]):
            y = block.step(y, k, v, slot, bias)
        state["n"] = n + 1
        return self.ln_f(y)[:, 0], state


def _run(level: nn.Module, x: Tensor) -> Tensor:
    """Run a level over a possibly empty sequence (an RNN refuses length 0)."""
    return level(x) if x.shape[1] else x


def _run_bounded(level: nn.Module, x: Tensor, horizon: int) -> Tensor:
    """Output k of a level that sees only its last `horizon` items, x[:, k−horizon+1 .. k], from a
    fresh state (0: all of them): the bar and phrase levels never see more in generation than a
    training window gave them. Items k < horizon are one ordinary run; each later item is the last
    output of a run over its own `horizon` items (all in one batch)."""
    B, T, C = x.shape
    if not horizon or T <= horizon:
        return _run(level, x)
    head = level(x[:, :horizon])
    tails = x.unfold(1, horizon, 1)[:, 1:]                        # [B, T−horizon, C, horizon]
    tails = tails.permute(0, 1, 3, 2).reshape(-1, horizon, C)
    last = level(tails)[:, -1].reshape(B, T - horizon, -1)
    return torch.cat([head, last], 1)


# --------------------------------------------------------------------------- generation state
@dataclass
class GenerationState:
    """Everything `HierarchicalDrumModel.step` carries from one step to the next."""

    t: int                 # index of the next step to consume (−1: the silent step before bar 0)
    start: Tensor          # [B] long, absolute position of step 0 (phase of the bar grid)
    step: Any              # step level's RNN hidden state / KV cache
    bar: Any = None        # bar level's state
    phrase: Any = None     # phrase level's state
    bar_sum_h: Tensor | None = None      # running sums over the bar in progress
    bar_sum_x: Tensor | None = None
    phrase_sum_h: Tensor | None = None   # ... over the phrase in progress
    phrase_sum_x: Tensor | None = None
    bars_done: int = 0     # complete bars, counted from the first bar of the phrase holding step 0
    phrase_bars: int = 0   # bars pooled into the phrase in progress
    bar_ctx: Tensor | None = None        # [B, H] projected state of the last complete bar
    bar_in_ctx: Tensor | None = None     # [B, H] ... into the step level's input (context_input)
    phrase_ctx: Tensor | None = None     # [B, H] ... of the last complete phrase
    history: Tensor | None = None        # [B, K·spb, D] ring of the last K bars' inputs (lookback)
    bar_inputs: list | None = None       # the last horizon_bars bar-level inputs (bounded horizon)
    phrase_inputs: list | None = None    # ... the last phrase-level inputs
    features: Tensor | None = None       # [B, H] the state behind the last logits (expressive heads)
    cond: Tensor | None = None           # [B, H] the conditions' embedding sum (condition_input)
    steps_per_bar: int = 16              # the bar length this generation runs in (its meter)
    lead: int = 0                        # steps of step 0's bar before step 0: start mod spb
    bar_steps: int = 0                   # steps pooled into the bar in progress (fewer in a first partial one)
    played: Any = None                   # expressive history GRU state (expressive_history)
    played_out: Tensor | None = None     # [B, expressive_dim] its output after the last step read


# --------------------------------------------------------------------------- phrase pooling
def pool_phrases(bars: Tensor, offset: Tensor, bars_per_phrase: int) -> Tensor:
    """Phrase inputs [B, P, F]: the mean of `bars` [B, nb, F] over each phrase slot of the grid
    that puts offset[b] bars of the first phrase before the window (window bar k is slot bar
    k + offset). Slot 0 is a partial phrase when offset > 0 (its bars in the window only); a slot
    past the window's end is partial too and is never read before it completes (causality).
    P = (nb + max offset) // bpp; with offset 0, the nb // bpp complete phrases."""
    B, nb, F = bars.shape
    P = (nb + int(offset.max())) // bars_per_phrase if B else 0
    if P == 0:
        return bars.new_zeros(B, 0, F)
    k = torch.arange(P * bars_per_phrase, device=bars.device)[None] - offset[:, None]   # [B, P·bpp]
    valid = (k >= 0) & (k < nb)
    picked = bars.gather(1, k.clamp(0, nb - 1)[..., None].expand(-1, -1, F)) * valid[..., None]
    count = valid.reshape(B, P, bars_per_phrase).sum(2, keepdim=True).clamp(min=1)
    return picked.reshape(B, P, bars_per_phrase, F).sum(2) / count


def pool_bars(x: Tensor, lead: Tensor, steps_per_bar: int) -> Tensor:
    """Bar inputs [B, nb, F]: the mean of `x` [B, L, F] over each bar of the song's grid, lead[b]
    steps of the first bar lying before the window (slot 0 is then a partial bar, pooled over its
    steps in the window; `pool_phrases` one level down). With lead 0 everywhere, the L // spb
    complete bars of the window, as one reshape."""
    B, L, F = x.shape
    if not bool(lead.any()):
        nb = L // steps_per_bar
        return x[:, :nb * steps_per_bar].reshape(B, nb, steps_per_bar, F).mean(2)
    return pool_phrases(x, lead, steps_per_bar)


# --------------------------------------------------------------------------- lookback input
def lookback_features(step: Tensor, steps_per_bar: int, bars: int) -> Tensor:
    """Lookback RNN input (Waite et al., 2016) for every step t of `step` [B, L, D]:
    for k = 1..bars, the hits of the step being predicted k bars ago, step[t+1−k·spb], and a flag
    rep_k[t] = 1 if step[t] equals step[t−k·spb] (the step just read repeats k bars ago).
    Steps before the sequence's start are zeros (flag 0). Returns [B, L, bars·(D+1)]."""
    B, L, D = step.shape
    span = bars * steps_per_bar
    padded = torch.cat([step.new_zeros(B, span, D), step], 1)       # padded[:, span + j] = step[:, j]
    t = torch.arange(L, device=step.device)
    feats = []
    for k in range(1, bars + 1):
        ago = span - k * steps_per_bar
        feats.append(padded[:, ago + 1:ago + 1 + L])                   # step[t+1−k·spb]
        same = (step == padded[:, ago:ago + L]).all(-1) & (t >= k * steps_per_bar)
        feats.append(same.to(step.dtype)[..., None])                   # step[t] == step[t−k·spb]
    return torch.cat(feats, -1)


# --------------------------------------------------------------------------- the model
class HierarchicalDrumModel(nn.Module):
    """Next-step drum hits from a step level, a bar level and a phrase level.

    forward(step [B, L, D], bar=None, phrase=None, mask=None, start=None) returns
    `step_logits` [B, L, P] (the output head's parameters for step t+1's drum vector: D logits
    for output="independent", 2^D for "joint", D + head_hidden_dim for "autoregressive"; see
    train/training/heads.py), `bar_preds` [B, nb, D] (logits of bar k+1's mean pattern),
    `phrase_preds` [B, nph, D] (same for phrases); the last two are None for a flat model
    (`hierarchy=False`). With expressive heads a fourth item is (velocity, offset) [B, L−1, D] of
    steps 1..L−1 given their true hits; with `expressive_history` they also read the played
    `velocity` (uint8) and `offset` (int8, 1/128 step) [B, L, D] of the steps before (teacher
    forcing; None = not played, zeros). With return_hidden=True the last item is z [B, L, H],
    the step-level state the head reads (for further per-step heads). `bar`/`phrase` are accepted for the
    dataset's batch layout but ignored: the model pools its own bars from `step` so no future can
    leak in.
    """

    def __init__(self, num_drums: int, step_hidden_dim: int = 128, bar_hidden_dim: int = 128,
                 phrase_hidden_dim: int = 128, num_layers: int = 2, dropout: float = 0.1,
                 use_transformer: bool = False, steps_per_bar: int = 16, bars_per_phrase: int = 4,
                 rnn_type: str = "gru", nhead: int = 4, hierarchy: bool = True,
                 max_context: int = 512, lookback_bars: int = 0, output: str = "independent",
                 head_hidden_dim: int = 64, phrase_position: bool = False, song_phrases: bool = False,
                 expressive: bool = False, expressive_dim: int = 64, max_steps_per_bar: int = 0,
                 conditioning: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                 bpm_buckets: Sequence[float] = (), cond_dropout: float = 0.0, horizon_bars: int = 0,
                 expressive_history: bool = False, expressive_spread: bool = False, expressive_timing: bool = True,
                 embedding_std: float = 1.0, context_input: bool = False):
        super().__init__()
        self._config = dict(num_drums=int(num_drums), step_hidden_dim=int(step_hidden_dim),
                            bar_hidden_dim=int(bar_hidden_dim), phrase_hidden_dim=int(phrase_hidden_dim),
                            num_layers=int(num_layers), dropout=float(dropout),
                            use_transformer=bool(use_transformer), steps_per_bar=int(steps_per_bar),
                            bars_per_phrase=int(bars_per_phrase), rnn_type=str(rnn_type),
                            nhead=int(nhead), hierarchy=bool(hierarchy), max_context=int(max_context),
                            lookback_bars=int(lookback_bars), output=str(output),
                            head_hidden_dim=int(head_hidden_dim), phrase_position=bool(phrase_position),
                            song_phrases=bool(song_phrases), expressive=bool(expressive),
                            expressive_dim=int(expressive_dim),
                            max_steps_per_bar=int(max_steps_per_bar or 0), horizon_bars=int(horizon_bars),
                            expressive_history=bool(expressive) and bool(expressive_history))
        if expressive and expressive_spread:   # recorded only when on: older checkpoints keep an equal config
            self._config["expressive_spread"] = True
        if expressive and not expressive_timing:   # trained on grid-only data: plays on the grid (play)
            self._config["expressive_timing"] = False
        if float(embedding_std) != 1.0:   # recorded only when set: older checkpoints keep an equal config
            self._config["embedding_std"] = float(embedding_std)
        if context_input and hierarchy:   # likewise
            self._config["context_input"] = True
        # only a conditioned model records these keys: older checkpoints keep an equal config
        if conditioning:
            vocab = (dict.fromkeys(conditioning, ()) if not isinstance(conditioning, Mapping)
                     else conditioning)
            self._config.update(conditioning={str(k): [str(v) for v in vs] for k, vs in vocab.items()},
                                bpm_buckets=[float(b) for b in bpm_buckets], cond_dropout=float(cond_dropout))
        self._check_config()
        D, H, Hb, Hp = num_drums, step_hidden_dim, bar_hidden_dim, phrase_hidden_dim
        self.num_drums, self.steps_per_bar, self.bars_per_phrase = D, steps_per_bar, bars_per_phrase
        self.hierarchy, self.use_transformer = bool(hierarchy), bool(use_transformer)
        self.lookback_bars = int(lookback_bars)
        self.context_input = bool(self._config.get("context_input"))
        # the bar level sees the last horizon_bars bars, the phrase level the phrases of as many
        # bars (0 = everything since step 0): the training window's bars, so that generation
        # past one window runs the levels as they were trained (docs/model.md, "Horizon")
        self.horizon_bars = int(horizon_bars)
        self.horizon_phrases = max(1, self.horizon_bars // bars_per_phrase) if self.horizon_bars else 0

        self.input = nn.Linear(D, H)
        if self.lookback_bars:      # its own layer: a lookback-free checkpoint keeps its keys
            self.lookback = nn.Linear(self.lookback_bars * (D + 1), H)
        # phase in the bar, one row per step of the longest bar read: every meter shares the rows of
        # its steps (the downbeat is row 0 in 4/4, 3/4 and 6/8 alike)
        self.max_steps_per_bar = max(self._config["max_steps_per_bar"], int(steps_per_bar))
        self.in_pos = nn.Embedding(self.max_steps_per_bar, H)    # phase of the step read
        self.out_pos = nn.Embedding(self.max_steps_per_bar, H)   # phase of the step predicted
        self.phrase_position = bool(phrase_position)
        self.song_phrases = bool(song_phrases)     # phrases on the song's grid, not the window's
        if self.phrase_position:    # bar in phrase on the song's grid: when a fill or crash is due
            self.in_bar_pos = nn.Embedding(bars_per_phrase, H)
            self.out_bar_pos = nn.Embedding(bars_per_phrase, H)
        self.drop = nn.Dropout(dropout)
        # one embedding table per condition, row 0 = none (train/training/conditioning.py)
        self.conditions = nn.ModuleDict({name: nn.Embedding(len(labels) + 1, H) for name, labels
                                         in self._config.get("conditioning", {}).items()})
        self.step_rnn = self._level(H)
        # the step distribution: output_layer gives the head's parameters (heads.py)
        self.head: StepHead = make_head(output, D, head_hidden_dim)
        self.output_layer = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), nn.GELU(),
                                          nn.Dropout(dropout), nn.Linear(H, self.head.num_params))
        if expressive:   # velocity and offset of each hit, given the step's hits (train/training/expressive.py)
            from train.training.expressive import ExpressiveHeads
            self.expressive = ExpressiveHeads(H, D, int(expressive_dim), self._config["expressive_history"],
                                              spread=self._config.get("expressive_spread", False))
        # the position and condition tables are added to the step's input and state; at torch's
        # N(0, 1) they drown the GRU's state (|h| < 1) behind the output head's LayerNorm until
        # training shrinks them (docs/model.md, "Initialisation")
        # (at 1.0, torch's own draw stands, so a seed builds the model it always built)
        if float(embedding_std) != 1.0:
            for table in [self.in_pos, self.out_pos, *self.conditions.values()] + (
                    [self.in_bar_pos, self.out_bar_pos] if self.phrase_position else []):
                nn.init.normal_(table.weight, std=float(embedding_std))
        if self.hierarchy:
            # pooled step states + the bar's mean pattern -> one bar-level input
            self.step_to_bar = nn.Linear(H + D, Hb)
            self.bar_rnn = self._level(Hb)
            self.bar_head = nn.Linear(Hb, D)
            self.bar_to_step = nn.Linear(Hb, H)
            self.bar_start = nn.Parameter(torch.zeros(Hb))      # context before bar 0 completes
            self.bar_to_phrase = nn.Linear(Hb + D, Hp)
            self.phrase_rnn = self._level(Hp)
            self.phrase_head = nn.Linear(Hp, D)
            self.phrase_to_step = nn.Linear(Hp, H)
            self.phrase_start = nn.Parameter(torch.zeros(Hp))
            # the last complete bar's state also enters the step level's input, so the step RNN
            # can carry what the bar level heard into its own state (docs/model.md, "Bar context in the step input")
            if self.context_input:
                self.bar_to_input = nn.Linear(Hb, H)

    # ---- config / checkpoint contract
    def _check_config(self) -> None:
        c = self._config
        if c["num_drums"] < 1 or c["steps_per_bar"] < 1 or c["bars_per_phrase"] < 1:
            raise ValueError(f"num_drums, steps_per_bar and bars_per_phrase must be ≥ 1, got {c}")
        if c["lookback_bars"] < 0:
            raise ValueError(f"lookback_bars must be ≥ 0 (0 disables), got {c['lookback_bars']}")
        if c["horizon_bars"] < 0:
            raise ValueError(f"horizon_bars must be ≥ 0 (0 = unbounded), got {c['horizon_bars']}")
        if c["use_transformer"]:
            for key in ("step_hidden_dim", "bar_hidden_dim", "phrase_hidden_dim"):
                if c[key] % c["nhead"]:
                    raise ValueError(f"{key}={c[key]} must be divisible by nhead={c['nhead']}")
            if c["max_context"] < 1:
                raise ValueError(f"max_context must be ≥ 1, got {c['max_context']}")
        elif c["rnn_type"] not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {c['rnn_type']!r}")
        if c.get("context_input") and c["use_transformer"]:
            raise ValueError("context_input runs the step level bar by bar with a carried state: "
                             "a recurrent step level only (use_transformer=false)")
        if c["output"] not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {c['output']!r}")
        if c.get("conditioning"):
            from train.training.conditioning import check_names
            problems = check_names(list(c["conditioning"]))
            if problems:
                raise ValueError("; ".join(problems))
            if not 0.0 <= c["cond_dropout"] <= 1.0:
                raise ValueError(f"cond_dropout must be in [0, 1], got {c['cond_dropout']}")
            if "bpm" in c["conditioning"] and sorted(c["bpm_buckets"]) != c["bpm_buckets"]:
                raise ValueError(f"bpm_buckets must be increasing tempo edges, got {c['bpm_buckets']}")

    @property
    def config(self) -> dict:
        """The constructor kwargs: `HierarchicalDrumModel.from_config(m.config)` rebuilds m."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping) -> "HierarchicalDrumModel":
        return cls(**{str(k): v for k, v in dict(config).items()})

    def _level(self, dim: int) -> nn.Module:
        c = self._config
        if c["use_transformer"]:
            return TransformerLevel(dim, c["num_layers"], c["nhead"], c["dropout"], c["max_context"])
        return RecurrentLevel(dim, c["num_layers"], c["dropout"], c["rnn_type"])

    # ---- full forward pass (training)
    def forward(self, step: Tensor, bar: Tensor | None = None, phrase: Tensor | None = None,
                mask: Tensor | None = None, start: Tensor | None = None, return_hidden: bool = False,
                steps_per_bar: Tensor | int | None = None, cond: Tensor | None = None,
                velocity: Tensor | None = None, offset: Tensor | None = None):
        z, bar_preds, phrase_preds = self.features(step, start, steps_per_bar, cond)
        out = (self.output_layer(self.drop(z)), bar_preds, phrase_preds)
        if self._config["expressive"]:
            # a 4th prediction: (velocity, offset) of steps 1..L-1 given their true hits (teacher
            # forcing), from the states that predict them, z[:, :-1] (and the played history)
            out += (self.expressive_preds(z, step, velocity, offset),)
        return out + (z,) if return_hidden else out

    def expressive_preds(self, z: Tensor, step: Tensor, velocity: Tensor | None = None,
                         offset: Tensor | None = None) -> tuple[Tensor, ...]:
        """forward's 4th output from the step states z [B, L, H] (`features`): (velocity, offset)
        [B, L−1, D] of steps 1..L−1 given their true hits and, with the history, the played steps
        before; with `expressive_spread` then also their standard deviations (σ_vel, σ_off)."""
        past = None
        if self._config["expressive_history"]:
            from train.training.expressive import played_input
            past = self.expressive.read(played_input(step, velocity, offset).to(z.dtype))[:, :-1]
        feats, hits = self.drop(z[:, :-1]), step[:, 1:] > 0
        means = self.expressive(feats, hits, past)
        return means + self.expressive.scale(feats, hits, past) if self.expressive.spread is not None else means

    def bar_length(self, steps_per_bar: Tensor | int | None = None) -> int:
        """The one bar length of a call: None = the model's; a [B] tensor (a batch's songs) must hold
        one value (batches are bucketed by meter); it must fit the position tables."""
        if steps_per_bar is None:
            return self.steps_per_bar
        if isinstance(steps_per_bar, Tensor):
            values = steps_per_bar.unique()
            if len(values) != 1:
                raise ValueError(f"one bar length per call: a batch must hold songs of one meter, got "
                                 f"steps_per_bar {values.tolist()} (make_loader buckets batches by meter)")
            steps_per_bar = values[0]
        spb = int(steps_per_bar)
        if not 1 <= spb <= self.max_steps_per_bar:
            raise ValueError(f"steps_per_bar={spb}: this model reads bars of 1..{self.max_steps_per_bar} "
                             "steps (its position tables, model.max_steps_per_bar)")
        return spb

    def features(self, step: Tensor, start: Tensor | None = None, steps_per_bar: Tensor | int | None = None,
                 cond: Tensor | None = None):
        """(z [B, L, H], bar_preds, phrase_preds): the step-level state before the output head.
        `cond` [B, C] long: condition ids (None = all none); see `condition_input`."""
        if step.dim() != 3 or step.shape[-1] != self.num_drums:
            raise ValueError(f"step must be [B, L, {self.num_drums}], got {tuple(step.shape)}")
        B, L, D = step.shape
        spb, bpp = self.bar_length(steps_per_bar), self.bars_per_phrase
        t = torch.arange(L, device=step.device)
        start = step.new_zeros(B, dtype=torch.long) if start is None else start.to(step.device).long()
        phase = (start[:, None] + t) % spb                                    # [B, L]
        x = self.input(step) + self.in_pos(phase)
        if len(self.conditions):
            x = x + self.condition_input(cond, B, step.device)[:, None]
        if self.phrase_position:
            pos = start[:, None] + t                                           # absolute step
            x = x + self.in_bar_pos((pos // spb) % bpp)
            out_bar = self.out_bar_pos(((pos + 1) // spb) % bpp)
        if self.lookback_bars:
            x = x + self.lookback(lookback_features(step, spb, self.lookback_bars))
        lead = start % spb                                                     # [B] song grid
        if self.hierarchy and self.context_input:
            h, bar_in, bar_h = self._run_fed_back(x, step, lead, spb)
        else:
            h = self.step_rnn(self.drop(x))                                    # [B, L, H]
        z = h + self.out_pos((phase + 1) % spb)
        if self.phrase_position:
            z = z + out_bar
        if not self.hierarchy:
            return z, None, None

        if not self.context_input:
            bar_in = pool_bars(torch.cat([h, step], -1), lead, spb)          # [B, nb, H + D]
            bar_h = _run_bounded(self.bar_rnn, self.drop(self.step_to_bar(bar_in)), self.horizon_bars)  # [B, nb, Hb]
        bar_x = bar_in[..., h.shape[-1]:]
        off = self.phrase_offset(start, spb)                                   # [B]
        phrase_in = pool_phrases(torch.cat([bar_h, bar_x], -1), off, bpp)    # [B, P, Hb + D]
        phrase_h = _run_bounded(self.phrase_rnn, self.drop(self.bar_to_phrase(phrase_in)),
                                self.horizon_phrases)                          # [B, P, Hp]

        # step t may use bar slot k only once it is complete: k < (lead + t + 1) // spb; row 0 =
        # "none yet"; phrase slots likewise, counted on the phrase grid (off bars before the
        # window's first bar)
        bars = torch.cat([self.bar_start.expand(B, 1, -1), bar_h], 1)
        phrases = torch.cat([self.phrase_start.expand(B, 1, -1), phrase_h], 1)
        bar_done = (lead[:, None] + t + 1) // spb                             # [B, L]
        done = (off[:, None] * spb + lead[:, None] + t + 1) // (spb * bpp)    # [B, L]
        bar_ctx = bars.gather(1, bar_done[..., None].expand(-1, -1, bars.shape[-1]))
        phrase_ctx = phrases.gather(1, done[..., None].expand(-1, -1, phrases.shape[-1]))
        z = z + self.bar_to_step(bar_ctx) + self.phrase_to_step(phrase_ctx)
        return z, self.bar_head(bar_h), self.phrase_head(phrase_h)

    def _run_fed_back(self, x: Tensor, step: Tensor, lead: Tensor, spb: int) -> tuple[Tensor, Tensor, Tensor]:
        """(h [B, L, H], bar inputs [B, nb, H + D], bar_h [B, nb, Hb]) with the bar level's context in
        the step level's input: the steps of bar k read the state of bar k − 1 (bar_start for the
        first), so the step RNN runs one bar at a time and the bar level one item per bar, as
        `step` does in generation. Rows are run in groups of one bar phase (`lead`); nb and the
        slots are those of `pool_bars` (a row whose last slot is partial pools its steps so far)."""
        B, L, H = x.shape
        nb = (L + int(lead.max())) // spb if B else 0
        h = x.new_zeros(B, L, H)
        bar_in = x.new_zeros(B, nb, H + self.num_drums)
        bar_h = x.new_zeros(B, nb, self._config["bar_hidden_dim"])
        for value in lead.unique().tolist():
            rows = (lead == value).nonzero()[:, 0]
            if len(rows) == B:
                rows = slice(None)
            h[rows], bar_in[rows], bar_h[rows] = self._fed_back_rows(x[rows], step[rows], int(value), spb, nb)
        return h, bar_in, bar_h

    def _fed_back_rows(self, x: Tensor, step: Tensor, lead: int, spb: int, nb: int) -> tuple[Tensor, Tensor, Tensor]:
        """`_run_fed_back` for rows of one bar phase."""
        B, L, _ = x.shape
        lines = list(range(spb - lead, L, spb)) + [L]            # chunk ends: bar lines, then the end
        ctx, state, level_state, recent = self.bar_start.expand(B, -1), None, None, []
        hs, bar_ins, bar_hs, a = [], [], [], 0
        for b in lines:
            if b == a:
                continue
            chunk = x[:, a:b] + self.bar_to_input(ctx)[:, None]
            h, state = self.step_rnn.run(self.drop(chunk), state)
            hs.append(h)
            if len(bar_hs) < nb:          # a bar (or the batch's partial last slot) ends at b
                bar_ins.append(torch.cat([h, step[:, a:b]], -1).mean(1))
                ctx, level_state = self._level_step(self.bar_rnn, self.drop(self.step_to_bar(bar_ins[-1])),
                                                    level_state, recent, self.horizon_bars)
                bar_hs.append(ctx)
            a = b
        stack = lambda items, like: torch.stack(items, 1) if items else like.new_zeros(B, 0, like.shape[-1])
        return torch.cat(hs, 1), stack(bar_ins, torch.cat([x[:, :0], step[:, :0]], -1)), \
            stack(bar_hs, self.bar_start[None, None])

    def condition_input(self, cond: Tensor | None, batch_size: int, device) -> Tensor:
        """[B, H]: the sum of the condition embeddings, added to every step's input. `cond` [B, C]
        holds ids in the order of `config["conditioning"]` (0 = none; None: all none). In training
        each id is replaced by none with probability cond_dropout, so the none rows learn
        unconditional generation."""
        if cond is None:
            cond = torch.zeros(batch_size, len(self.conditions), dtype=torch.long, device=device)
        cond = cond.to(device).long()
        p = self._config["cond_dropout"]
        if self.training and p > 0:
            cond = cond.masked_fill(torch.rand(cond.shape, device=device) < p, 0)
        return sum(emb(cond[:, i]) for i, emb in enumerate(self.conditions.values()))

    def phrase_offset(self, start: Tensor | None, steps_per_bar: int | None = None) -> Tensor:
        """[B] bars of the song's phrase before the window's first bar: ((start // spb) mod bpp)
        with song_phrases, else 0 (phrases counted from the window's first bar)."""
        if start is None or not self.song_phrases:
            return torch.zeros(1 if start is None else len(start), dtype=torch.long,
                               device=None if start is None else start.device)
        return (start.long() // self.bar_length(steps_per_bar)) % self.bars_per_phrase

    # ---- incremental path (generation)
    def init_state(self, batch_size: int, t: int = 0, start: Tensor | int = 0,
                   steps_per_bar: int | None = None, cond: Tensor | None = None) -> GenerationState:
        """A fresh state whose next consumed step has index `t` (use −1 for a silent lead-in step
        that belongs to no bar). `start` is the absolute position of step 0, as in forward;
        `steps_per_bar` the bar length to generate in (default the model's); `cond` [B, C] or [C]
        the condition ids of every step (None: none)."""
        like = next(self.parameters())
        spb = self.bar_length(steps_per_bar)
        start = torch.as_tensor(start, dtype=torch.long, device=like.device).expand(batch_size).clone()
        lead = start % spb
        if bool((lead != lead[0]).any()):
            raise ValueError("the rows of one generation batch must share their bar phase, start mod "
                             f"steps_per_bar; got {lead.tolist()}")
        state = GenerationState(t=t, start=start, step=self.step_rnn.init_state(batch_size, like),
                                steps_per_bar=spb, lead=int(lead[0]) if batch_size else 0)
        if len(self.conditions):
            if cond is not None:
                cond = torch.as_tensor(cond, dtype=torch.long, device=like.device)
                cond = cond.expand(batch_size, len(self.conditions))
            state.cond = self.condition_input(cond, batch_size, like.device)
        if self.lookback_bars:
            state.history = like.new_zeros(batch_size, self.lookback_bars * spb, self.num_drums)
        if self.hierarchy:
            H, D = self._config["step_hidden_dim"], self.num_drums
            state.bar = self.bar_rnn.init_state(batch_size, like)
            state.phrase = self.phrase_rnn.init_state(batch_size, like)
            state.bar_sum_h, state.bar_sum_x = like.new_zeros(batch_size, H), like.new_zeros(batch_size, D)
            state.phrase_sum_h = like.new_zeros(batch_size, self._config["bar_hidden_dim"])
            state.phrase_sum_x = like.new_zeros(batch_size, D)
            state.bar_ctx = self.bar_to_step(self.bar_start).expand(batch_size, H)
            if self.context_input:
                state.bar_in_ctx = self.bar_to_input(self.bar_start).expand(batch_size, H)
            state.phrase_ctx = self.phrase_to_step(self.phrase_start).expand(batch_size, H)
            off = self.phrase_offset(start, spb)
            if bool((off != off[0]).any()):
                raise ValueError("song_phrases: the rows of one generation batch must share their phrase "
                                 f"phase, (start // steps_per_bar) mod bars_per_phrase; got {off.tolist()}")
            state.bars_done = int(off[0])       # bars of the first phrase before step 0
            state.phrase_bars = 0
            state.bar_inputs, state.phrase_inputs = [], []
        if self._config["expressive_history"]:      # nothing played yet: forward's zero state
            state.played_out = like.new_zeros(batch_size, self._config["expressive_dim"])
        return state

    def step(self, x: Tensor, state: GenerationState, return_hidden: bool = False,
             played: tuple[Tensor, Tensor] | None = None):
        """Consume step `state.t` (x [B, D]) and return the head parameters of step t+1 [B, P]
        (and z [B, H] with return_hidden); equals forward(...)[0][:, t] on the same prefix (see
        tests/test_model.py). `played` = (velocity / 127, offset in steps) [B, D] of x, read by
        the expressive history (None: not played; the silent lead-in step t = −1 is never read)."""
        if self._config["expressive_history"] and state.t >= 0:
            from train.training.expressive import played_input
            vel, off = played if played is not None else (None, None)
            state.played_out, state.played = self.expressive.read_step(
                played_input(x, vel, off, scaled=True).to(x.dtype), state.played)
        spb = state.steps_per_bar
        phase = (state.start + state.t) % spb
        inp = self.input(x) + self.in_pos(phase)
        if state.cond is not None:
            inp = inp + state.cond
        pos = state.start + state.t                                             # absolute step
        if self.phrase_position:
            inp = inp + self.in_bar_pos((pos // spb) % self.bars_per_phrase)
        if self.lookback_bars:
            inp = inp + self.lookback(self._lookback_step(x, state))
        if self.hierarchy and self.context_input:
            inp = inp + state.bar_in_ctx
        h, state.step = self.step_rnn.step(self.drop(inp), state.step)
        z = h + self.out_pos((phase + 1) % spb)
        if self.phrase_position:
            z = z + self.out_bar_pos(((pos + 1) // spb) % self.bars_per_phrase)
        if self.hierarchy:
            if state.t >= 0:
                self._advance_bars(h, x, state)
            z = z + state.bar_ctx + state.phrase_ctx
        state.t += 1
        state.features = z
        out = self.output_layer(self.drop(z))
        return (out, z) if return_hidden else out

    def play(self, state: GenerationState, hits: Tensor, gen: torch.Generator | None = None,
             temperature: float = 0.0) -> tuple[Tensor, Tensor]:
        """(velocity / 127, offset in steps) [B, D] of the next step's `hits` [B, D] from the state
        `step` left: the expressive heads' means (forward's 4th output on the same prefix), or with
        `gen` and `temperature` > 0 a draw around them from the heads' spread (expressive_spread).
        A model trained on data with every hit on the grid (`expressive_timing=False`, set by the
        trainer from the export) plays offset 0."""
        if gen is None or not temperature:
            vel, off = self.expressive(state.features, hits > 0, state.played_out)
        else:
            vel, off = self.expressive.sample(state.features, hits > 0, state.played_out, gen, temperature)
        # data with every hit on the grid taught no timing: a drift of the untrained head is not a feel
        return (vel, off) if self._config.get("expressive_timing", True) else (vel, torch.zeros_like(off))

    def _lookback_step(self, x: Tensor, state: GenerationState) -> Tensor:
        """`lookback_features` of step t = state.t from the ring of the last K·spb inputs
        (slot j mod K·spb holds step j); indices < 0, the lead-in step included, are zeros."""
        spb, t, ring = state.steps_per_bar, state.t, state.history
        n = ring.shape[1]
        # flags first: step t−K·spb shares its slot with step t, which is written next
        same = [(x == ring[:, (t - k * spb) % n]).all(-1) & (t - k * spb >= 0)
                for k in range(1, self.lookback_bars + 1)]
        if t >= 0:
            ring[:, t % n] = x
        feats = []
        for k in range(1, self.lookback_bars + 1):
            j = t + 1 - k * spb
            feats += [ring[:, j % n] if j >= 0 else torch.zeros_like(x), same[k - 1].to(x.dtype)[:, None]]
        return torch.cat(feats, -1)

    def _advance_bars(self, h: Tensor, x: Tensor, state: GenerationState) -> None:
        """Accumulate the step into its bar; when a bar (phrase) completes, run its level once.
        Bars lie on the song's grid: the first one is partial when step 0 is not a bar line."""
        spb, bpp = state.steps_per_bar, self.bars_per_phrase
        state.bar_sum_h = state.bar_sum_h + h
        state.bar_sum_x = state.bar_sum_x + x
        state.bar_steps += 1
        if (state.lead + state.t + 1) % spb:
            return
        n_steps = state.bar_steps
        bar_in = self.step_to_bar(torch.cat([state.bar_sum_h / n_steps, state.bar_sum_x / n_steps], -1))
        bar_h, state.bar = self._level_step(self.bar_rnn, self.drop(bar_in), state.bar,
                                            state.bar_inputs, self.horizon_bars)
        state.bar_ctx = self.bar_to_step(bar_h)
        if self.context_input:
            state.bar_in_ctx = self.bar_to_input(bar_h)
        state.phrase_sum_h = state.phrase_sum_h + bar_h
        # the bar's mean · spb (its sum when whole): a phrase pools bar means, as forward does
        state.phrase_sum_x = state.phrase_sum_x + state.bar_sum_x * (spb / n_steps)
        state.bar_sum_h, state.bar_sum_x = torch.zeros_like(h), torch.zeros_like(x)
        state.bar_steps = 0
        state.bars_done += 1                 # on the phrase grid (starts at the phrase offset)
        state.phrase_bars += 1               # bars pooled into this phrase (fewer in a first partial one)
        if state.bars_done % bpp:
            return
        n = state.phrase_bars
        phrase_in = self.bar_to_phrase(torch.cat([state.phrase_sum_h / n,
                                                  state.phrase_sum_x / (spb * n)], -1))
        state.phrase_bars = 0
        phrase_h, state.phrase = self._level_step(self.phrase_rnn, self.drop(phrase_in), state.phrase,
                                                  state.phrase_inputs, self.horizon_phrases)
        state.phrase_ctx = self.phrase_to_step(phrase_h)
        state.phrase_sum_h = torch.zeros_like(state.phrase_sum_h)
        state.phrase_sum_x = torch.zeros_like(state.phrase_sum_x)

    @staticmethod
    def _level_step(level: nn.Module, x: Tensor, level_state: Any, recent: list, horizon: int):
        """One item of a bar/phrase level, as `_run_bounded` computes it: an incremental step while
        the level has seen at most `horizon` items (0: always), then the last output of a run over
        the last `horizon` items (`recent` keeps them): O(horizon) per bar, O(1) amortised per step."""
        if not horizon:
            return level.step(x, level_state)
        recent.append(x)
        if len(recent) <= horizon:
            return level.step(x, level_state)
        del recent[0]
        return level(torch.stack(recent, 1))[:, -1], None    # the carried state is not used again

    @torch.no_grad()
    def generate(self, start_seq: Tensor | None = None, length: int = 256, temperature: float = 1.0,
                 top_p: float | None = None, seed: int | None = None, batch_size: int = 1,
                 start: Tensor | int = 0, top_k: int | None = None, expressive: bool = False,
                 steps_per_bar: int | None = None, cond: Tensor | None = None,
                 prime_played: tuple[Tensor, Tensor] | None = None, expressive_temperature: float = 1.0,
                 guidance: float = 1.0):
        """Sample `length` steps after the prime `start_seq` [B, T0, D] (or [T0, D]; None or T0 = 0
        for no prime, then `batch_size` rows start from one silent lead-in step that is not
        returned). Returns [B, T0 + length, D]: the prime, then binary sampled steps. One
        `step` per generated step: RNN states / a ring KV cache are carried, bars and phrases
        are pooled as they complete. `start` ([B] or int) is the absolute position of the prime's
        first step, as in forward (sets the bar phase); `steps_per_bar` the bar length (meter) to
        generate in, default the model's. Each step's drum vector is drawn from the
        output head's joint distribution with temperature / top_k / top_p (heads.decode_joint).
        Deterministic for a given `seed`. `expressive=True` (a model with expressive heads) returns
        (hits, velocity, offset): each sampled step's velocity / 127 and offset in steps given its
        hits; over the prime its own `prime_played` (velocity / 127, offset in steps, shaped like
        `start_seq`; None: 0), which the expressive history reads, so the continuation is played
        in the prime's dynamics and feel. With the heads' spread (`expressive_spread`) each hit's
        velocity and offset are drawn around their means, scaled by `expressive_temperature`
        (0: the means). `cond` [B, C] or [C]: condition ids
        (conditioning.request_ids; None: unconditional). `guidance` ≠ 1 (a conditioned model and
        a `cond`): classifier-free guidance, each step drawn from p(x | none)·(p(x | c) / p(x | none))^guidance
        (heads.StepHead.sample_guided), a second state running the same steps with every condition
        none; > 1 plays the requested style more plainly than p(x | c) does."""
        if float(guidance) != 1.0 and cond is None:
            raise ValueError(f"guidance={guidance} needs a condition to guide towards (cond=None)")
        was_training = self.training
        self.eval()
        try:
            like = next(self.parameters())
            prime, unbatched = self._prime(start_seq, batch_size, like)
            B, T0, D = prime.shape
            gen = torch.Generator(device=like.device)
            gen.manual_seed(seed) if seed is not None else gen.seed()
            out = like.new_zeros(B, T0 + length, D)
            out[:, :T0] = prime
            played = like.new_zeros(2, B, T0 + length, D)
            if prime_played is not None and T0:
                played[:, :, :T0] = torch.stack([torch.as_tensor(p).to(like).expand(B, T0, D) for p in prime_played])
            start = torch.as_tensor(start, dtype=torch.long, device=like.device).expand(B)
            spb = self.bar_length(steps_per_bar)
            if cond is not None:    # [C] or [B, C] -> [B, C]: rows are sampled in groups below
                cond = torch.as_tensor(cond, dtype=torch.long, device=like.device).expand(B, -1)
            # one generation state runs rows of one bar (and song-phrase) phase: a group each
            phase = (start % spb) * self.bars_per_phrase + self.phrase_offset(start, spb).expand(B)
            for key in phase.unique():
                rows = (phase == key).nonzero()[:, 0]
                self._sample_rows(out, played, rows, T0, length, start[rows], spb, gen,
                                  (temperature, top_k, top_p),
                                  float(expressive_temperature) if expressive else None,
                                  None if cond is None else cond[rows], float(guidance))
            if expressive:
                return (out[0], *played[:, 0]) if unbatched else (out, *played)
            return out[0] if unbatched else out
        finally:
            self.train(was_training)

    def _sample_rows(self, out: Tensor, played: Tensor, rows: Tensor, T0: int, length: int, start: Tensor,
                     spb: int, gen: torch.Generator, decoding: tuple, expressive: float | None,
                     cond: Tensor | None = None, guidance: float = 1.0) -> None:
        """`generate` for the batch rows `rows` (one bar phase): fills out / played in place.
        `expressive`: None (hits only), else the temperature of the heads' spread (0: their means).
        With `guidance` ≠ 1 a second state reads the same steps with every condition none."""
        n, D = len(rows), self.num_drums
        rows = slice(None) if n == out.shape[0] else rows     # all rows: views of `out`, as always
        states = [self.init_state(n, t=0 if T0 else -1, start=start, steps_per_bar=spb, cond=cond)]
        if guidance != 1.0:
            states.append(self.init_state(n, t=0 if T0 else -1, start=start, steps_per_bar=spb, cond=None))

        def read(x, i):     # every state consumes step i (x) as played; returns their logits
            return [self.step(x, s, played=played[:, rows, i].unbind(0) if i is not None else None)
                    for s in states]

        logits = None
        for i, x in enumerate(out[rows, :T0].unbind(1) if T0 else [out.new_zeros(n, D)]):
            logits = read(x, i if T0 else None)
        for i in range(length):
            out[rows, T0 + i] = (self.head.sample(logits[0], gen, *decoding) if len(states) == 1 else
                                 self.head.sample_guided(logits[0], logits[1], guidance, gen, *decoding))
            if expressive is not None:   # how the sampled hits are played, from the state that chose them
                played[:, rows, T0 + i] = torch.stack(self.play(states[0], out[rows, T0 + i], gen, expressive))
            if i + 1 < length:
                logits = read(out[rows, T0 + i], T0 + i)

    def _prime(self, start_seq: Tensor | None, batch_size: int, like: Tensor) -> tuple[Tensor, bool]:
        if start_seq is None:
            return like.new_zeros(batch_size, 0, self.num_drums), False
        start_seq = torch.as_tensor(start_seq)
        unbatched = start_seq.dim() == 2
        prime = start_seq[None] if unbatched else start_seq
        if prime.dim() != 3 or prime.shape[-1] != self.num_drums:
            raise ValueError(f"start_seq must be [B, T0, {self.num_drums}] or [T0, {self.num_drums}], "
                             f"got {tuple(start_seq.shape)}")
        if prime.shape[1] == 0 and prime.shape[0] == 0:
            prime = like.new_zeros(batch_size, 0, self.num_drums)
        return prime.to(like), unbatched

    def compute_loss(self, preds, batch: Mapping[str, Tensor], weights: Mapping[str, float] | None = None,
                     level_loss: str = "mse"):
        """`compute_loss` with this model's bar/phrase grid and output head, plus the expressive
        terms when the model has its heads (train/training/expressive.py)."""
        start = batch.get("start")
        spb = self.bar_length(batch.get("steps_per_bar"))
        offset = self.phrase_offset(start, spb) if self.song_phrases and start is not None else None
        lead = start.long() % spb if start is not None else None
        total, terms = compute_loss(preds[:3], batch, weights, level_loss=level_loss,
                                    steps_per_bar=spb, bars_per_phrase=self.bars_per_phrase,
                                    head=self.head, phrase_offset=offset, bar_lead=lead)
        if self._config["expressive"] and len(preds) > 3:   # the velocity and offset terms
            from train.training.expressive import add_expressive_loss
            total, terms = add_expressive_loss(total, terms, preds[3], batch, weights)
        return total, terms

    # ---- scoring (evaluate, rewards): the one place that turns head parameters into numbers
    def step_marginals(self, step_logits: Tensor) -> Tensor:
        """p(drum d hits at step t+1) [..., D] from forward's step output [..., P]."""
        return self.head.marginals(step_logits)

    def step_log_prob(self, step: Tensor, mask: Tensor | None = None, start: Tensor | None = None,
                      step_logits: Tensor | None = None, steps_per_bar: Tensor | int | None = None) -> Tensor:
        """log2 p(step[:, t+1] | step[:, :t+1]) [B, L−1] in bits: the whole drum vector's
        probability (the loss definition for every output head); a forward pass unless
        `step_logits` (forward's first output on `step`) is given. Rows where mask[:, t+1] is False
        are padding (still computed; callers mask them)."""
        if step_logits is None:
            step_logits = self(step, mask=mask, start=start, steps_per_bar=steps_per_bar)[0]
        return self.head.log_prob(step_logits[:, :-1], step[:, 1:]) / math.log(2.0)


# --------------------------------------------------------------------------- sampling and loss
def sample_hits(logits: Tensor, temperature: float = 1.0, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Per-drum Bernoulli sampling of independent logits (`heads.sample_bernoulli`): p = σ(logit / T),
    T ≤ 0 greedy; top_p per drum over its two outcomes. Decoding over the joint step event is
    `model.head.sample` (what `generate` uses)."""
    return sample_bernoulli(logits, temperature, generator, top_p)


def _level_targets(step: Tensor, mask: Tensor | None, size: int, count: int) -> tuple[Tensor, Tensor]:
    """Mean hit pattern [B, count, D] of consecutive groups of `size` steps, and [B, count] bool:
    True where the group is all real steps (padding is a tail, so its last step decides)."""
    B, L, D = step.shape
    hits = (step[:, :count * size] > 0).to(step.dtype)
    means = hits.reshape(B, count, size, D).mean(2)
    if mask is None:
        return means, torch.ones(B, count, dtype=torch.bool, device=step.device)
    return means, mask[:, size - 1:count * size:size].bool()


def _grid_targets(step: Tensor, mask: Tensor | None, span: int, count: int,
                  lead: Tensor | None) -> tuple[Tensor, Tensor]:
    """`_level_targets` of slots of `span` steps on the grid shifted by `lead` [B] steps (None: 0):
    slot j holds window steps from j·span − lead; it counts only when wholly inside the window and
    real."""
    B, L, D = step.shape
    if lead is None or not bool(lead.any()):
        return _level_targets(step, mask, span, count)
    first = torch.arange(count, device=step.device)[None] * span - lead[:, None]            # [B, count]
    idx = (first[..., None] + torch.arange(span, device=step.device)).clamp(0, L - 1)       # [B, count, span]
    hits = (step > 0).to(step.dtype).gather(1, idx.reshape(B, -1)[..., None].expand(-1, -1, D))
    means = hits.reshape(B, count, span, D).mean(2)
    real = (first >= 0) & (first + span <= L)
    if mask is not None:
        real = real & mask.bool().gather(1, (first + span - 1).clamp(0, L - 1))
    return means, real


def _masked_mean(per_item: Tensor, valid: Tensor) -> Tensor:
    valid = valid.to(per_item.dtype)
    return (per_item * valid).sum() / valid.sum().clamp(min=1)


def compute_loss(preds, batch: Mapping[str, Tensor], weights: Mapping[str, float] | None = None,
                 *, level_loss: str = "mse", steps_per_bar: int = 16, bars_per_phrase: int = 4,
                 head: StepHead | None = None, phrase_offset: Tensor | None = None,
                 bar_lead: Tensor | None = None):
    """Weighted sum of the three levels' next-item losses; returns (total, {"step", "bar", "phrase"}).

    preds = (step_logits [B, L, P], bar_preds [B, nb, D] | None, phrase_preds [B, nph, D] | None),
    batch = {"step" [B, L, D], "mask" [B, L] (optional)}; hits y = step > 0, m = mask; `head`
    (heads.py; None = independent Bernoullis, step_logits [B, L, D]) gives p(y | step_logits).

    step   = −Σ_{b, t<L−1} m[b,t+1] · log2 p(y[b,t+1] | step_logits[b,t]) / Σ m[b,t+1]
             (NLL of the whole drum vector in bits per step, the same for every output head;
             for independent logits it is Σ_d BCE_d / ln 2)
    bar    = mean over real bars k ≥ 1 of ℓ(bar_preds[b,k−1], ȳ_k),  ȳ_k = mean of y over bar k
    phrase = the same over phrases (steps_per_bar · bars_per_phrase steps each); with
             `phrase_offset` [B] (song_phrases) phrase slot j covers window steps
             [(j·bpp − offset)·spb, (j+1)·bpp − offset)·spb), as the model pools them;
             `bar_lead` [B] (windows starting mid-bar: start mod spb) shifts the bar and phrase
             slots back by that many steps, the song's grid the model pools
    ℓ = mean_d (σ(p) − ȳ)² for level_loss="mse" (reaches 0), or BCE-with-logits against the
    soft target ȳ for "bce" (floored at the entropy of ȳ). A level counts only when every step of
    its target bar/phrase is real. total = Σ_k weights[k] · term_k; a zero weight disables a term
    (0 · term: no gradient, yet every parameter stays in the graph for DDP); every term is still
    reported (0 for a flat model, whose bar/phrase preds are None). Missing keys of `weights`
    take DEFAULT_LOSS_WEIGHTS.
    """
    if level_loss not in LEVEL_LOSSES:
        raise ValueError(f"level_loss must be one of {LEVEL_LOSSES}, got {level_loss!r}")
    weights = {**DEFAULT_LOSS_WEIGHTS, **dict(weights or {})}
    step_logits, bar_preds, phrase_preds = preds
    step, mask = batch["step"], batch.get("mask")
    head = IndependentHead(step.shape[-1]) if head is None else head
    nll = -head.log_prob(step_logits[:, :-1], step[:, 1:]) / math.log(2.0)      # bits [B, L−1]
    valid = mask[:, 1:] if mask is not None else torch.ones_like(nll, dtype=torch.bool)
    terms = {"step": _masked_mean(nll, valid)}

    for name, preds_k, size in (("bar", bar_preds, steps_per_bar),
                                ("phrase", phrase_preds, steps_per_bar * bars_per_phrase)):
        if preds_k is None:
            terms[name] = step_logits.new_zeros(())
            continue
        if preds_k.shape[1] < 2:                       # no next bar/phrase to predict
            terms[name] = preds_k.sum() * 0.0          # still in the graph (see below)
            continue
        lead = bar_lead
        if name == "phrase" and phrase_offset is not None:
            lead = phrase_offset * steps_per_bar + (0 if bar_lead is None else bar_lead)
        means, real = _grid_targets(step, mask, size, preds_k.shape[1], lead)
        pred, want = preds_k[:, :-1], means[:, 1:].to(preds_k.dtype)
        if level_loss == "mse":
            per = (torch.sigmoid(pred) - want).pow(2).mean(-1)
        else:
            per = F.binary_cross_entropy_with_logits(pred, want, reduction="none").mean(-1)
        terms[name] = _masked_mean(per, real[:, 1:])

    # a zero weight contributes 0·term: no gradient, but every head stays in the autograd graph,
    # so DistributedDataParallel needs no find_unused_parameters
    total = sum(float(weights[k]) * terms[k] for k in ("step", "bar", "phrase"))
    return total, {k: v.detach() for k, v in terms.items()}
