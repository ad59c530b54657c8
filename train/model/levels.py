"""The sequence levels: one GRU/LSTM or causal Transformer runs over each level's items (steps, bars,
phrases), with the incremental `step` generation uses, and the bounded-horizon runs of the bar and
phrase levels (docs/model.md, "Horizon")."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.model.config import ModelConfig


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


def make_level(config: ModelConfig, dim: int) -> nn.Module:
    """The level the config asks for, `dim` wide."""
    c = config
    if c.use_transformer:
        return TransformerLevel(dim, c.num_layers, c.nhead, c.dropout, c.max_context)
    return RecurrentLevel(dim, c.num_layers, c.dropout, c.rnn_type)


def run_level(level: nn.Module, x: Tensor) -> Tensor:
    """Run a level over a possibly empty sequence (an RNN refuses length 0)."""
    return level(x) if x.shape[1] else x


def run_bounded(level: nn.Module, x: Tensor, horizon: int) -> Tensor:
    """Output k of a level that sees only its last `horizon` items, x[:, k−horizon+1 .. k], from a
    fresh state (0: all of them): the bar and phrase levels never see more in generation than a
    training window gave them. Items k < horizon are one ordinary run; each later item is the last
    output of a run over its own `horizon` items (all in one batch)."""
    B, T, C = x.shape
    if not horizon or T <= horizon:
        return run_level(level, x)
    head = level(x[:, :horizon])
    tails = x.unfold(1, horizon, 1)[:, 1:]                        # [B, T−horizon, C, horizon]
    tails = tails.permute(0, 1, 3, 2).reshape(-1, horizon, C)
    last = level(tails)[:, -1].reshape(B, T - horizon, -1)
    return torch.cat([head, last], 1)



def level_step(level: nn.Module, x: Tensor, level_state: Any, recent: list, horizon: int):
    """One item of a bar/phrase level, as `run_bounded` computes it: an incremental step while
    the level has seen at most `horizon` items (0: always), then the last output of a run over
    the last `horizon` items (`recent` keeps them): O(horizon) per bar, O(1) amortised per step."""
    if not horizon:
        return level.step(x, level_state)
    recent.append(x)
    if len(recent) <= horizon:
        return level.step(x, level_state)
    del recent[0]
    return level(torch.stack(recent, 1))[:, -1], None    # the carried state is not used again
