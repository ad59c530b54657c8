"""The step → bar → phrase drum model (docs/model.md); its loss is loss.py, its step-by-step path incremental.py.

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
from typing import Mapping

import torch
from torch import Tensor, nn

from train.model.config import ModelConfig, upgrade
from train.model.expressive import ExpressiveHeads, add_expressive_loss, played_input
from train.model.features import lookback_features, pool_bars, pool_phrases
from train.model.heads import StepHead, make_head
from train.model.incremental import IncrementalMixin
from train.model.levels import level_step, make_level, run_bounded
from train.model.loss import compute_loss


class HierarchicalDrumModel(IncrementalMixin, nn.Module):
    """Next-step drum hits from a step level, a bar level and a phrase level.

    forward(step [B, L, D], bar=None, phrase=None, mask=None, start=None) returns
    `step_logits` [B, L, P] (the output head's parameters for step t+1's drum vector: D logits
    for output="independent", 2^D for "joint", D + head_hidden_dim for "autoregressive"; see
    train/model/heads.py), `bar_preds` [B, nb, D] (logits of bar k+1's mean pattern),
    `phrase_preds` [B, nph, D] (same for phrases); the last two are None for a flat model
    (`hierarchy=False`). With expressive heads a fourth item is (velocity, offset) [B, L−1, D] of
    steps 1..L−1 given their true hits; with `expressive_history` they also read the played
    `velocity` (uint8) and `offset` (int8, 1/128 step) [B, L, D] of the steps before (teacher
    forcing; None = not played, zeros). With return_hidden=True the last item is z [B, L, H],
    the step-level state the head reads (for further per-step heads). `bar`/`phrase` are accepted for the
    dataset's batch layout but ignored: the model pools its own bars from `step` so no future can
    leak in.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"HierarchicalDrumModel(config: ModelConfig), got {type(config).__name__} "
                            "(a checkpoint's model_config dict: HierarchicalDrumModel.from_config)")
        c = self.model_config = config.canonical()
        self.num_drums, self.steps_per_bar, self.bars_per_phrase = c.num_drums, c.steps_per_bar, c.bars_per_phrase
        self.hierarchy, self.use_transformer = c.hierarchy, c.use_transformer
        self.lookback_bars, self.context_input = c.lookback_bars, c.context_input
        self.phrase_position = c.phrase_position     # bar in phrase on the song's grid: when a fill or crash is due
        self.song_phrases = c.song_phrases           # phrases on the song's grid, not the window's
        # the bar level sees the last horizon_bars bars, the phrase level the phrases of as many
        # bars (0 = everything since step 0): the training window's bars, so that generation
        # past one window runs the levels as they were trained (docs/model.md, "Horizon")
        self.horizon_bars = c.horizon_bars
        self.horizon_phrases = max(1, c.horizon_bars // c.bars_per_phrase) if c.horizon_bars else 0
        # phase in the bar, one row per step of the longest bar read: every meter shares the rows of
        # its steps (the downbeat is row 0 in 4/4, 3/4 and 6/8 alike)
        self.max_steps_per_bar = max(c.max_steps_per_bar, c.steps_per_bar)
        # the modules in the order they were always created: a seed builds the model it always built
        self._build_step_level(c)
        self._build_outputs(c)
        self._init_tables(c.embedding_std)
        if self.hierarchy:
            self._build_hierarchy(c)

    def _build_step_level(self, c: ModelConfig) -> None:
        D, H = c.num_drums, c.step_hidden_dim
        self.input = nn.Linear(D, H)
        if self.lookback_bars:      # its own layer: a lookback-free checkpoint keeps its keys
            self.lookback = nn.Linear(self.lookback_bars * (D + 1), H)
        self.in_pos = nn.Embedding(self.max_steps_per_bar, H)    # phase of the step read
        self.out_pos = nn.Embedding(self.max_steps_per_bar, H)   # phase of the step predicted
        if self.phrase_position:
            self.in_bar_pos = nn.Embedding(c.bars_per_phrase, H)
            self.out_bar_pos = nn.Embedding(c.bars_per_phrase, H)
        self.drop = nn.Dropout(c.dropout)
        # one embedding table per condition, row 0 = none (train/model/conditioning.py)
        self.conditions = nn.ModuleDict({name: nn.Embedding(len(labels) + 1, H) for name, labels
                                         in c.conditioning.items()})
        self.step_rnn = make_level(c, H)

    def _build_outputs(self, c: ModelConfig) -> None:
        """The step distribution (output_layer gives the head's parameters, heads.py) and the
        velocity and offset of each hit given the step's hits (expressive.py)."""
        D, H = c.num_drums, c.step_hidden_dim
        self.head: StepHead = make_head(c.output, D, c.head_hidden_dim)
        self.output_layer = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), nn.GELU(),
                                          nn.Dropout(c.dropout), nn.Linear(H, self.head.num_params))
        if c.expressive:
            self.expressive = ExpressiveHeads(H, D, c.expressive_dim, c.expressive_history, spread=c.expressive_spread)

    def _init_tables(self, std: float) -> None:
        """The position and condition tables are added to the step's input and state; at torch's
        N(0, 1) they drown the GRU's state (|h| < 1) behind the output head's LayerNorm until
        training shrinks them (docs/model.md, "Initialisation"). At 1.0 torch's own draw stands."""
        if std == 1.0:
            return
        for table in [self.in_pos, self.out_pos, *self.conditions.values()] + (
                [self.in_bar_pos, self.out_bar_pos] if self.phrase_position else []):
            nn.init.normal_(table.weight, std=std)

    def _build_hierarchy(self, c: ModelConfig) -> None:
        D, H, Hb, Hp = c.num_drums, c.step_hidden_dim, c.bar_hidden_dim, c.phrase_hidden_dim
        # pooled step states + the bar's mean pattern -> one bar-level input
        self.step_to_bar = nn.Linear(H + D, Hb)
        self.bar_rnn = make_level(c, Hb)
        self.bar_head = nn.Linear(Hb, D)
        self.bar_to_step = nn.Linear(Hb, H)
        self.bar_start = nn.Parameter(torch.zeros(Hb))      # context before bar 0 completes
        self.bar_to_phrase = nn.Linear(Hb + D, Hp)
        self.phrase_rnn = make_level(c, Hp)
        self.phrase_head = nn.Linear(Hp, D)
        self.phrase_to_step = nn.Linear(Hp, H)
        self.phrase_start = nn.Parameter(torch.zeros(Hp))
        # the last complete bar's state also enters the step level's input, so the step RNN
        # can carry what the bar level heard into its own state (docs/model.md, "Bar context in the step input")
        if self.context_input:
            self.bar_to_input = nn.Linear(Hb, H)

    # ---- config / checkpoint contract
    @property
    def config(self) -> dict:
        """The plain dict a checkpoint stores (ModelConfig.to_dict): `from_config(m.config)` rebuilds m."""
        return self.model_config.to_dict()

    @classmethod
    def from_config(cls, config: Mapping | ModelConfig) -> "HierarchicalDrumModel":
        """The model of a checkpoint's `model_config` dict of any version (config.upgrade: keys it
        lacks take the value the model was trained with), or of a ModelConfig."""
        return cls(config if isinstance(config, ModelConfig) else upgrade(config))

    def forward(self, step: Tensor, bar: Tensor | None = None, phrase: Tensor | None = None,
                mask: Tensor | None = None, start: Tensor | None = None, return_hidden: bool = False,
                steps_per_bar: Tensor | int | None = None, cond: Tensor | None = None,
                velocity: Tensor | None = None, offset: Tensor | None = None):
        z, bar_preds, phrase_preds = self.features(step, start, steps_per_bar, cond)
        out = (self.output_layer(self.drop(z)), bar_preds, phrase_preds)
        if self.model_config.expressive:
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
        if self.model_config.expressive_history:
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
            bar_h = run_bounded(self.bar_rnn, self.drop(self.step_to_bar(bar_in)), self.horizon_bars)  # [B, nb, Hb]
        bar_x = bar_in[..., h.shape[-1]:]
        off = self.phrase_offset(start, spb)                                   # [B]
        phrase_in = pool_phrases(torch.cat([bar_h, bar_x], -1), off, bpp)    # [B, P, Hb + D]
        phrase_h = run_bounded(self.phrase_rnn, self.drop(self.bar_to_phrase(phrase_in)),
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
        bar_h = x.new_zeros(B, nb, self.model_config.bar_hidden_dim)
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
                ctx, level_state = level_step(self.bar_rnn, self.drop(self.step_to_bar(bar_ins[-1])),
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
        p = self.model_config.cond_dropout
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
    # ---- loss and scoring
    def compute_loss(self, preds, batch: Mapping[str, Tensor], weights: Mapping[str, float] | None = None,
                     level_loss: str = "mse"):
        """`compute_loss` with this model's bar/phrase grid and output head, plus the expressive
        terms when the model has its heads (train/model/expressive.py)."""
        start = batch.get("start")
        spb = self.bar_length(batch.get("steps_per_bar"))
        offset = self.phrase_offset(start, spb) if self.song_phrases and start is not None else None
        lead = start.long() % spb if start is not None else None
        total, terms = compute_loss(preds[:3], batch, weights, level_loss=level_loss,
                                    steps_per_bar=spb, bars_per_phrase=self.bars_per_phrase,
                                    head=self.head, phrase_offset=offset, bar_lead=lead)
        if self.model_config.expressive and len(preds) > 3:   # the velocity and offset terms
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
