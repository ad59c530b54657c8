"""Reward shaping from the rhythm metrics (config group `rl/`).

Each term compares a metric of what the model produces with a target:

    r_i = −|m_i − target_i|      (target a number, or `window`: the window's own stored metric;
                                  for ioi_var the same measure of the real steps the output stands for)
    r_i = m_i                    (target null: maximise the metric)
    R   = Σ_i w_i · r_i          (per window)

Metrics: `avg_hits` (density, hits per step), `syncopation` (share of hits off the beat grid),
`ioi_var` (inter-onset-interval variance, mean over drums), or any function named by import path
("pkg.module:fn", called as fn(roll [B, L, D], start=[B], steps_per_bar=, beats_per_bar=) -> [B]).

Two modes:
- `surrogate`: the metrics are taken in expectation under the predicted hit probabilities
  p[b, t, d] = σ(logit) of the next step, which makes R differentiable:
      E[avg_hits]    = Σ_t Σ_d p / L
      E[syncopation] = Σ_{t off-beat} Σ_d p / Σ_t Σ_d p
      E[ioi_var]     from the gap distribution q(t, k) = p_t · p_{t+k} · Π_{t<j<t+k}(1 − p_j), k ≤ max_gap:
                     n = Σ q, s1 = Σ k·q, s2 = Σ k²·q, var = s2/n − (s1/n)²  (per drum, then mean)
  and total = step loss + weight · (−mean R).
- `reinforce`: continuations are sampled from the model after a real prime, scored with the same
  numba kernels the metrics stage uses (`kernels.window_metrics`), and trained by policy gradient
      A = (R − b) / (std_batch(R) + ε),   b ← μ·b + (1 − μ)·mean(R),
      loss = −mean_b(A · log π(sample)) / sample_steps,   total = step loss + weight · loss.

Learned term weights (`rl.learn_weights: true`, off by default): the fixed w_i give way to
uncertainty weighting (train/training/loss_weighting.py) of the distances d_i = |m_i − target_i| ≥ 0,
      L_rl = Σ_i exp(−s_i) · mean_b(d_i) + s_i,    s_i ∈ (−max_log_var, max_log_var), s_i(0) = −log w_i,
so the configured w_i is each term's starting weight. `surrogate`: total = step loss + weight · L_rl
(the model and the s_i learn from it together). `reinforce`: R = −Σ_i exp(−s_i)·d_i with the current
(detached) weights, and weight · L_rl with d_i detached is added so only the s_i learn from it
(towards exp(−s_i) = 1 / mean d_i: every term on the same scale). The s_i are trained by the model's
optimizer (own param group, no weight decay), all-reduced across ranks, and saved in checkpoints.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from train.training.loss_weighting import UncertaintyWeighting
from common.config import ConfigError

ALIASES = {"density": "avg_hits"}
MODES = ("surrogate", "reinforce")
EPS = 1e-6


@dataclass
class Term:
    name: str
    metric: str                     # builtin metric name, or the import path of `fn`
    weight: float
    target: str | float | None      # "window", a number, or None (maximise)
    fn: Callable | None = None      # a user function, when `metric` is an import path


def _import(path: str) -> Callable:
    module, _, attr = path.partition(":")
    if not attr:
        module, _, attr = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"rl metric {path!r}: cannot import ({e}); use a builtin {BUILTINS} "
                          "or 'package.module:function'") from e
    if not callable(fn):
        raise ConfigError(f"rl metric {path!r} is not callable")
    return fn


def build_terms(rl_cfg) -> list[Term]:
    terms = []
    raw = OmegaConf.to_container(rl_cfg.terms, resolve=True) if rl_cfg.get("terms") else {}
    for name, spec in raw.items():
        spec = spec or {}
        metric = ALIASES.get(spec.get("metric", name), spec.get("metric", name))
        weight = float(spec.get("weight", 1.0))
        target = spec.get("target", "window")
        if not (target is None or target == "window" or isinstance(target, (int, float))):
            raise ConfigError(f"rl.terms.{name}.target={target!r}: use 'window', a number or null")
        fn = None if metric in BUILTINS else _import(metric)
        if weight != 0.0:
            terms.append(Term(name, metric, weight, None if target is None else
                              (target if target == "window" else float(target)), fn))
    return terms


def window_metrics_needed(rl_cfg) -> list[str]:
    """The stored window metrics the enabled terms compare with (target `window`): what the
    dataset must gather into each batch's `metrics`; nothing when rl is off."""
    if not rl_cfg.get("enabled", False):
        return []
    return sorted({t.metric if t.fn is None else t.name for t in build_terms(rl_cfg) if t.target == "window"})


def validate(rl_cfg, window) -> None:
    """Raise ConfigError for values that cannot work (called before any training work)."""
    if not rl_cfg.get("enabled", False):
        return
    if rl_cfg.mode not in MODES:
        raise ConfigError(f"rl.mode={rl_cfg.mode!r}: one of {list(MODES)}")
    if not build_terms(rl_cfg):
        raise ConfigError("rl.enabled=true but no rl.terms entry has a non-zero weight")
    if rl_cfg.get("learn_weights", False):
        _validate_learned(rl_cfg)
    if rl_cfg.mode == "reinforce":
        spb, L = int(window.steps_per_bar), int(window.seq_len)
        p, g = int(rl_cfg.prime_steps), int(rl_cfg.sample_steps)
        if p % spb or p < spb or g <= 0 or g % spb or p + g > L:
            raise ConfigError(f"rl.prime_steps={p}, rl.sample_steps={g}: both must be whole bars of "
                              f"steps_per_bar={spb} (at least one bar each) and together ≤ window.seq_len={L}")
        if not 0.0 <= float(rl_cfg.baseline_momentum) < 1.0:
            raise ConfigError(f"rl.baseline_momentum={rl_cfg.baseline_momentum}: must lie in [0, 1)")
        normalize_mode(rl_cfg.get("normalize", True))


def _validate_learned(rl_cfg) -> None:
    """Learned weights need a distance (≥ 0) per term and a starting weight inside the bounds."""
    bound = float(rl_cfg.get("max_log_var", 5.0))
    if bound <= 0:
        raise ConfigError(f"rl.max_log_var={bound}: must be > 0")
    for t in build_terms(rl_cfg):
        if t.target is None:
            raise ConfigError(f"rl.terms.{t.name}.target=null with rl.learn_weights=true: a maximised "
                              "metric has no scale to learn (its weight would run to the bound); "
                              "give a target ('window' or a number)")
        if not math.exp(-bound) < t.weight < math.exp(bound):
            raise ConfigError(f"rl.terms.{t.name}.weight={t.weight}: the starting weight of a learned "
                              f"term must lie in (exp(−{bound}), exp({bound})) (rl.max_log_var={bound})")


NORMALIZE = ("batch", "running", "none")


def normalize_mode(value) -> str:
    """rl.normalize: batch | running | none (true/false, the older spelling, mean batch/none)."""
    mode = {True: "batch", False: "none"}.get(value, value) if isinstance(value, bool) else str(value)
    if mode not in NORMALIZE:
        raise ConfigError(f"rl.normalize={value!r}: one of {list(NORMALIZE)}")
    return mode


# --- expected (differentiable) metrics -----------------------------------------------------

def offbeat_mask(abs_steps: torch.Tensor, steps_per_bar: int, beats_per_bar: int) -> torch.Tensor:
    beat = steps_per_bar // beats_per_bar
    return ((abs_steps % steps_per_bar) % beat) != 0


def expected_avg_hits(p, mask):
    return (p.sum(-1) * mask).sum(1) / mask.sum(1).clamp_min(1)


def expected_syncopation(p, mask, abs_steps, steps_per_bar, beats_per_bar):
    hits = p.sum(-1) * mask
    off = offbeat_mask(abs_steps, steps_per_bar, beats_per_bar).to(p.dtype)
    return (hits * off).sum(1) / (hits.sum(1) + EPS)


def expected_ioi_var(p, mask, max_gap: int):
    """Expected IOI variance per drum under independent Bernoulli hits, mean over drums."""
    p = (p * mask.unsqueeze(-1)).clamp(0.0, 1.0 - EPS)                # [B, L, D]
    log_miss = torch.cumsum(torch.log1p(-p), dim=1)                   # c_t = Σ_{j≤t} log(1 − p_j)
    L = p.shape[1]
    n = s1 = s2 = 0.0
    for k in range(1, min(max_gap, L - 1) + 1):
        # q(t, k) = p_t p_{t+k} Π_{t<j<t+k}(1 − p_j) = p_t p_{t+k} exp(c_{t+k−1} − c_t)
        between = torch.exp(log_miss[:, k - 1:L - 1] - log_miss[:, :L - k])
        q = p[:, :L - k] * p[:, k:] * between
        q = q.sum(1)                                                   # [B, D]
        n, s1, s2 = n + q, s1 + k * q, s2 + k * k * q
    if isinstance(n, float):
        return p.new_zeros(p.shape[0])
    has = n > EPS
    mean = s1 / n.clamp_min(EPS)
    var = torch.where(has, s2 / n.clamp_min(EPS) - mean ** 2, torch.zeros_like(n)).clamp_min(0.0)
    return var.mean(-1)


@dataclass(frozen=True)
class RewardMetric:
    """A window metric (kernels.METRICS) a reward term can name without an import path.

    expected(p [B, L, D], mask [B, L], ctx) -> [B]: its expectation under the predicted hit
    probabilities (surrogate mode; ctx: abs_steps, spb, bpb, max_gap). real_target: a `window`
    target is this measure of the real steps the output stands for, not the stored window metric."""

    expected: Callable
    real_target: bool = False


# Reward terms look their metric up here; a new builtin is one entry (docs/metrics.md).
REWARD_METRICS = {
    "avg_hits": RewardMetric(lambda p, mask, c: expected_avg_hits(p, mask)),
    "syncopation": RewardMetric(lambda p, mask, c: expected_syncopation(p, mask, c.abs_steps, c.spb, c.bpb)),
    # the stored ioi_var counts every gap of the whole window, however long; the expectation is capped
    "ioi_var": RewardMetric(lambda p, mask, c: expected_ioi_var(p, mask, c.max_gap), real_target=True),
}
BUILTINS = tuple(REWARD_METRICS)


def _real_target(term: Term) -> bool:
    return term.fn is None and term.target == "window" and REWARD_METRICS[term.metric].real_target


class RewardShaper:
    """Turns model outputs into the reward-shaping loss term and its logs."""

    def __init__(self, rl_cfg, window, reduce_mean: Callable | None = None):
        self.mode = rl_cfg.mode
        self.weight = float(rl_cfg.weight)
        self.terms = build_terms(rl_cfg)
        self.spb, self.bpb = int(window.steps_per_bar), int(window.get("beats_per_bar", 4))
        self.max_gap = int(rl_cfg.get("max_gap", 2 * self.spb))
        self.prime, self.sample = int(rl_cfg.prime_steps), int(rl_cfg.sample_steps)
        self.momentum = float(rl_cfg.baseline_momentum)
        self.normalize = normalize_mode(rl_cfg.get("normalize", True))
        self.reduce_mean = reduce_mean or (lambda x: x)
        self.baseline: float | None = None
        self.var: float | None = None  # running reward variance (normalize=running)
        self.weighting: UncertaintyWeighting | None = None
        if rl_cfg.get("learn_weights", False):
            self.weighting = UncertaintyWeighting([t.name for t in self.terms],
                                                  init_log_var=[-math.log(t.weight) for t in self.terms],
                                                  max_log_var=float(rl_cfg.get("max_log_var", 5.0)))

    # running baseline, variance and learned weights are training state: they go into the checkpoint
    def state_dict(self) -> dict:
        out = {"baseline": self.baseline, "var": self.var}
        if self.weighting is not None:
            out["weighting"] = self.weighting.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.var = state.get("baseline"), state.get("var")
        if self.weighting is not None and "weighting" in state:
            self.weighting.load_state_dict(state["weighting"])

    # --- learned term weights (rl.learn_weights) ----------------------------------------------
    def to(self, device) -> "RewardShaper":
        if self.weighting is not None:
            self.weighting.to(device)
        return self

    def param_groups(self) -> list[dict]:
        """Optimizer param groups of the learned weights ([] when fixed): no weight decay, which
        would pull every s_i to 0 (every weight to 1)."""
        if self.weighting is None:
            return []
        return [{"params": list(self.weighting.parameters()), "weight_decay": 0.0}]

    def sync_grads(self) -> None:
        """Average the learned weights' gradients over ranks, as DDP does for the model's (call
        after the last micro-batch's backward). The identity for one process."""
        if self.weighting is not None:
            for p in self.weighting.parameters():
                if p.grad is not None:
                    p.grad.copy_(self.reduce_mean(p.grad))

    def learned_weights(self) -> dict[str, float]:
        """{"reward/weight/<term>": exp(−s_i)} for logging; {} with fixed weights."""
        if self.weighting is None:
            return {}
        return {f"reward/weight/{k}": v for k, v in self.weighting.weights().items()}

    def advantage(self, reward: torch.Tensor, baseline: float) -> torch.Tensor:
        """R − b, scaled per `rl.normalize`: batch → / std of this batch's R; running → / √(EMA of
        (R − b)², momentum baseline_momentum, all ranks pooled); none → unscaled."""
        adv = reward - baseline
        if self.normalize == "batch" and reward.numel() > 1:
            adv = adv / (reward.std(unbiased=False) + EPS)
        elif self.normalize == "running":
            batch_var = float(self.reduce_mean((adv.detach() ** 2).mean()))
            self.var = batch_var if self.var is None else self.momentum * self.var + (1 - self.momentum) * batch_var
            adv = adv / (self.var ** 0.5 + EPS)
        return adv

    def _target(self, term: Term, batch: dict, like: torch.Tensor, real: dict) -> torch.Tensor | None:
        if term.target is None:
            return None
        if term.target == "window" and term.name in real:   # the same measure of the real steps
            return real[term.name].to(like.device, like.dtype)
        if term.target == "window":
            stored = batch.get("metrics", {}).get(term.metric if term.fn is None else term.name)
            if stored is None:
                raise KeyError(f"rl term {term.name!r}: target 'window' needs the stored window "
                               f"metric {term.metric!r} in the batch; give a number instead")
            stored = stored.to(like.device, like.dtype)
            return stored.reshape(stored.shape[0], -1).mean(-1)
        return torch.full_like(like, term.target)

    def _combine(self, values: dict[str, torch.Tensor], batch: dict, real: dict | None = None):
        """(R per window, logs, {term: r_i per window}); R weighs r_i by the fixed or learned w_i.
        `real`: {term: the same metric of the real steps}, the `window` target of those terms."""
        learned = self.weighting.weights() if self.weighting is not None else {}
        total, logs, rs = 0.0, {}, {}
        for term in self.terms:
            v = values[term.name]
            tgt = self._target(term, batch, v, real or {})
            r = v if tgt is None else -(v - tgt).abs()
            total = total + learned.get(term.name, term.weight) * r
            rs[term.name] = r
            logs[f"reward/{term.name}"] = float(v.detach().mean())
            logs[f"reward/{term.name}_r"] = float(r.detach().mean())
        return total, logs, rs

    def _learned_loss(self, rs: dict[str, torch.Tensor], detach: bool) -> torch.Tensor:
        """Σ_i exp(−s_i)·mean_b(d_i) + s_i with d_i = −r_i = |m_i − target_i|."""
        return self.weighting({k: (-r.detach() if detach else -r).mean() for k, r in rs.items()})

    # --- surrogate ---------------------------------------------------------------------------
    def surrogate(self, step_logits: torch.Tensor, batch: dict, model: torch.nn.Module | None = None):
        """(loss, logs): −mean R of the expected metrics of the next-step predictions. With `model`
        its output head turns step_logits into per-drum probabilities (any `model.output`); without,
        step_logits are independent per-drum logits."""
        p = (model.step_marginals(step_logits[:, :-1].float()) if model is not None
             else torch.sigmoid(step_logits[:, :-1].float()))            # predictions of steps 1..L−1
        L = p.shape[1]
        mask = batch["mask"][:, 1:L + 1].to(p.dtype) if "mask" in batch else p.new_ones(p.shape[:2])
        start = batch.get("start", torch.zeros(p.shape[0], dtype=torch.long)).to(p.device)
        abs_steps = start.view(-1, 1) + torch.arange(1, L + 1, device=p.device).view(1, -1)
        ctx = SimpleNamespace(abs_steps=abs_steps, spb=self.spb, bpb=self.bpb, max_gap=self.max_gap)
        values = {}
        for term in self.terms:
            values[term.name] = (REWARD_METRICS[term.metric].expected(p, mask, ctx) if term.fn is None else
                                 term.fn(p * mask.unsqueeze(-1), start=start + 1, steps_per_bar=self.spb,
                                         beats_per_bar=self.bpb))
        # a real_target term's `window` target: the same expectation of the real next steps, not the
        # stored metric of the whole window (ioi_var: that one counts every gap, however long)
        real = {t.name: REWARD_METRICS[t.metric].expected(batch["step"][:, 1:L + 1].to(p.device, p.dtype), mask, ctx)
                for t in self.terms if _real_target(t) and "step" in batch}
        reward, logs, rs = self._combine(values, batch, real)
        logs["reward/total"] = float(reward.detach().mean())
        if self.weighting is not None:
            return self._learned_loss(rs, detach=False), logs
        return -reward.mean(), logs

    # --- REINFORCE ---------------------------------------------------------------------------
    def _score(self, roll: torch.Tensor, start: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of sampled continuations, from the same numba kernels as the metrics stage."""
        from kernels import window_metrics

        rolls = roll.detach().cpu().numpy().astype(np.uint8)
        builtin = [t for t in self.terms if t.fn is None]
        values = {t.name: np.zeros(len(rolls)) for t in builtin}
        for b, r in enumerate(rolls):
            m = window_metrics(r, seq_len=r.shape[0], stride=r.shape[0], steps_per_bar=self.spb,
                               beats_per_bar=self.bpb)
            for t in builtin:
                values[t.name][b] = float(np.mean(m[t.metric][0]))
        out = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in values.items()}
        for t in self.terms:
            if t.fn is not None:
                out[t.name] = torch.as_tensor(t.fn(roll.float(), start=start, steps_per_bar=self.spb,
                                                   beats_per_bar=self.bpb), dtype=torch.float32).cpu()
        return out

    def reinforce(self, model: torch.nn.Module, batch: dict):
        """(loss, logs): policy gradient on continuations that `model` samples (no gradients) after
        the first prime steps, then scores with gradients. Pass the raw module, not a DDP wrapper:
        DDP then sees a single forward per step.
        """
        step = batch["step"]
        prime = step[:, :self.prime]
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)))               # from the (saved) torch RNG
        start = batch.get("start", torch.zeros(step.shape[0], dtype=torch.long)).to(step.device)
        spb = batch.get("steps_per_bar")     # the batch's meter: sampled and scored on its bar grid
        with torch.no_grad():   # sampled under the same bar phase (start) as it is scored below
            seq = model.generate(prime, length=self.sample, temperature=1.0, top_p=None, seed=seed, start=start,
                                 steps_per_bar=spb)
        seq = seq[:, :self.prime + self.sample].to(step.dtype)
        # scored in the mode it was sampled in (generate runs in eval mode): with dropout on, the
        # log-probabilities would be another policy's, and the gradient off-policy
        was_training = model.training
        model.eval()
        try:
            logits = model(seq[:, :-1], start=start, steps_per_bar=spb)[0]
        finally:
            model.train(was_training)
        cont = seq[:, self.prime:]
        # log p of the sampled continuation's whole drum vectors (any output head), in nats
        logp = model.head.log_prob(logits[:, self.prime - 1:].float(), cont.float()).sum(1)
        values = self._score(cont, start + self.prime)
        # a real_target term's `window` target (ioi_var): the kernel's metric of the real steps of the
        # sampled span (same length, same kernel), not of the whole stored window
        like = [t for t in self.terms if _real_target(t)]
        real = {}
        if like:
            span = step[:, self.prime:self.prime + self.sample]
            if "mask" in batch:
                span = span * batch["mask"][:, self.prime:self.prime + self.sample, None].to(span.dtype)
            real_values = self._score((span > 0).to(step.dtype), start + self.prime)
            real = {t.name: real_values[t.name].to(step.device) for t in like}
        reward, logs, rs = self._combine({k: v.to(step.device) for k, v in values.items()}, batch, real)
        mean_r = float(self.reduce_mean(reward.mean().detach()))
        b = mean_r if self.baseline is None else self.baseline
        adv = self.advantage(reward, b)
        self.baseline = self.momentum * b + (1 - self.momentum) * mean_r
        loss = -(adv.detach() * logp).mean() / self.sample
        if self.weighting is not None:   # the s_i learn each term's scale; the model's gradient is the PG's
            loss = loss + self._learned_loss(rs, detach=True)
        logs.update({"reward/total": float(reward.mean()), "reward/baseline": self.baseline})
        return loss, logs


def build(rl_cfg, window, reduce_mean=None) -> RewardShaper | None:
    if not rl_cfg.get("enabled", False):
        return None
    validate(rl_cfg, window)
    return RewardShaper(rl_cfg, window, reduce_mean)
