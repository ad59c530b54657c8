"""Generation, one step at a time: `GenerationState` and the model's incremental path (`init_state`,
`step`, `play`, `generate`), a mixin of HierarchicalDrumModel. `step` equals forward on the same
prefix (tests/unit/test_model.py): RNN states / a ring KV cache are carried, bars and phrases pooled
as they complete."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from train.model.expressive import played_input
from train.model.levels import level_step


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


class IncrementalMixin:
    """HierarchicalDrumModel's generation path (its modules and `features` live in model.py)."""

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
            H, D = self.model_config.step_hidden_dim, self.num_drums
            state.bar = self.bar_rnn.init_state(batch_size, like)
            state.phrase = self.phrase_rnn.init_state(batch_size, like)
            state.bar_sum_h, state.bar_sum_x = like.new_zeros(batch_size, H), like.new_zeros(batch_size, D)
            state.phrase_sum_h = like.new_zeros(batch_size, self.model_config.bar_hidden_dim)
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
        if self.model_config.expressive_history:      # nothing played yet: forward's zero state
            state.played_out = like.new_zeros(batch_size, self.model_config.expressive_dim)
        return state

    def step(self, x: Tensor, state: GenerationState, return_hidden: bool = False,
             played: tuple[Tensor, Tensor] | None = None):
        """Consume step `state.t` (x [B, D]) and return the head parameters of step t+1 [B, P]
        (and z [B, H] with return_hidden); equals forward(...)[0][:, t] on the same prefix (see
        tests/unit/test_model.py). `played` = (velocity / 127, offset in steps) [B, D] of x, read by
        the expressive history (None: not played; the silent lead-in step t = −1 is never read)."""
        if self.model_config.expressive_history and state.t >= 0:
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
        return (vel, off) if self.model_config.expressive_timing else (vel, torch.zeros_like(off))

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
        bar_h, state.bar = level_step(self.bar_rnn, self.drop(bar_in), state.bar,
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
        phrase_h, state.phrase = level_step(self.phrase_rnn, self.drop(phrase_in), state.phrase,
                                                  state.phrase_inputs, self.horizon_phrases)
        state.phrase_ctx = self.phrase_to_step(phrase_h)
        state.phrase_sum_h = torch.zeros_like(state.phrase_sum_h)
        state.phrase_sum_x = torch.zeros_like(state.phrase_sum_x)

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
