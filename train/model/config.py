"""`ModelConfig`: the model's one contract and the one home of its defaults.

`HierarchicalDrumModel(ModelConfig(num_drums=9, ...))` builds a model; `conf/model/_base.yaml`
mirrors every default here (tests/unit/test_model_config.py fails on any disagreement), so
`python -m train` and a model built in code start from the same values. Three ways in:

- `ModelConfig(...)`: in code; unset fields take the defaults below (the trained recipe).
- `ModelConfig.from_hydra(cfg, num_drums)`: the trainer's path from `cfg.model` and `cfg.window`
  (the window's bar, phrase and length; the data's drums and longest bar); an unknown `model.*`
  key is a ConfigError listing the known ones.
- `upgrade(stored)`: a checkpoint's `model_config` dict. A key the dict lacks was written before the
  key existed, so it takes the value that reproduces the model of that time (`LEGACY`), not today's
  default.

Checkpoints store `to_dict()`: a plain dict (numbers, str, lists, dicts) that
`torch.load(weights_only=True)` accepts, every setting without effect on the model at one neutral
value, so two configs that build the same model store equal dicts (a resume compares them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

RNN_TYPES = ("gru", "lstm")

# What a key missing from a stored model_config meant: the constructor default of the code that
# wrote the checkpoint, from before the key was recorded (or while it was recorded only when set).
LEGACY: dict[str, Any] = dict(
    step_hidden_dim=128, bar_hidden_dim=128, phrase_hidden_dim=128, num_layers=2, dropout=0.1,
    use_transformer=False, steps_per_bar=16, bars_per_phrase=4, rnn_type="gru", nhead=4, hierarchy=True,
    max_context=512, lookback_bars=0, output="independent", head_hidden_dim=64, phrase_position=False,
    song_phrases=False, expressive=False, expressive_dim=64, max_steps_per_bar=0, conditioning=None,
    bpm_buckets=(), cond_dropout=0.0, horizon_bars=0, expressive_history=False, expressive_spread=False,
    expressive_timing=True, embedding_std=1.0, context_input=False)

# set by the trainer from the data, not by conf/model
FROM_DATA = ("num_drums", "expressive_timing")


@dataclass
class ModelConfig:
    """Every setting of `HierarchicalDrumModel`; the comments of conf/model/_base.yaml say what each does."""

    num_drums: int                        # drum classes D (the data's drum map)
    step_hidden_dim: int = 128
    bar_hidden_dim: int = 128
    phrase_hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.1
    use_transformer: bool = False
    steps_per_bar: int = 16               # the model's bar (from_hydra: window.steps_per_bar)
    bars_per_phrase: int = 4              # (from_hydra: window.bars_per_phrase)
    rnn_type: str = "gru"                 # gru | lstm (ignored when use_transformer)
    nhead: int = 4
    hierarchy: bool = True
    max_context: int = 256                # Transformer window per level (conf: ${window.seq_len})
    lookback_bars: int = 0
    output: str = "autoregressive"        # a name of heads.HEADS
    head_hidden_dim: int = 64
    phrase_position: bool = True
    song_phrases: bool = True
    expressive: bool = True
    expressive_dim: int = 64
    max_steps_per_bar: int = 0            # 0: steps_per_bar (from_hydra: the data's longest bar)
    conditioning: Any = field(default_factory=list)   # [names] or {name: [labels]} (the trainer's vocabulary)
    bpm_buckets: Any = field(default_factory=lambda: [80.0, 100.0, 120.0, 140.0])
    cond_dropout: float = 0.2
    horizon_bars: int | None = None       # None: the training window's bars (from_hydra); a model built
                                          # without a window reads None as 0 (unbounded)
    expressive_history: bool = True
    expressive_spread: bool = True
    expressive_timing: bool = True        # False: trained on grid-only data, plays every hit on the grid
    embedding_std: float = 0.02           # 1.0 keeps torch's own N(0, 1) draw of the tables
    context_input: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):      # YAML and checkpoints give ints for floats, lists for tuples
            value = getattr(self, f.name)
            if f.type in ("int", "float", "bool", "str"):
                setattr(self, f.name, {"int": int, "float": float, "bool": bool, "str": str}[f.type](value))
        self.max_steps_per_bar = int(self.max_steps_per_bar or 0)
        self.horizon_bars = None if self.horizon_bars is None else int(self.horizon_bars)
        vocab = self.conditioning or {}
        if not isinstance(vocab, Mapping):       # names only: the vocabularies come from the data
            vocab = dict.fromkeys(vocab, ())
        self.conditioning = {str(k): [str(v) for v in vs] for k, vs in vocab.items()}
        self.bpm_buckets = [float(b) for b in self.bpm_buckets or ()]
        self.check()

    def check(self) -> None:
        """ValueError naming the first setting the model cannot be built with."""
        from train.model.heads import HEADS

        if self.num_drums < 1 or self.steps_per_bar < 1 or self.bars_per_phrase < 1:
            raise ValueError(f"num_drums, steps_per_bar and bars_per_phrase must be ≥ 1, got {self.num_drums}, "
                             f"{self.steps_per_bar}, {self.bars_per_phrase}")
        if self.lookback_bars < 0:
            raise ValueError(f"lookback_bars must be ≥ 0 (0 disables), got {self.lookback_bars}")
        if (self.horizon_bars or 0) < 0:
            raise ValueError(f"horizon_bars must be ≥ 0 (0 = unbounded), got {self.horizon_bars}")
        if self.use_transformer:
            for key in ("step_hidden_dim", "bar_hidden_dim", "phrase_hidden_dim"):
                if getattr(self, key) % self.nhead:
                    raise ValueError(f"{key}={getattr(self, key)} must be divisible by nhead={self.nhead}")
            if self.max_context < 1:
                raise ValueError(f"max_context must be ≥ 1, got {self.max_context}")
        elif self.rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")
        if self.context_input and self.hierarchy and self.use_transformer:
            raise ValueError("context_input runs the step level bar by bar with a carried state: "
                             "a recurrent step level only (use_transformer=false)")
        if self.output not in HEADS:
            raise ValueError(f"output must be one of {tuple(HEADS)}, got {self.output!r}")
        if self.conditioning:
            self._check_conditioning()

    def _check_conditioning(self) -> None:
        from train.model.conditioning import check_names

        problems = check_names(list(self.conditioning))
        if problems:
            raise ValueError("; ".join(problems))
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if "bpm" in self.conditioning and sorted(self.bpm_buckets) != self.bpm_buckets:
            raise ValueError(f"bpm_buckets must be increasing tempo edges, got {self.bpm_buckets}")

    def canonical(self) -> "ModelConfig":
        """This config with every setting that has no effect on the model at one neutral value:
        the expressive options of a model without expressive heads, context_input of a flat model,
        the conditioning options of an unconditioned one; horizon_bars None as 0."""
        c = dataclasses.replace(self)
        if not c.expressive:
            c.expressive_history, c.expressive_spread, c.expressive_timing = False, False, True
        if not c.hierarchy:
            c.context_input = False
        if not c.conditioning:
            c.bpm_buckets, c.cond_dropout = [], 0.0
        c.horizon_bars = c.horizon_bars or 0
        return c

    def to_dict(self) -> dict:
        """The plain dict a checkpoint stores (`upgrade` reads it back)."""
        return dataclasses.asdict(self.canonical())

    @classmethod
    def from_hydra(cls, cfg, num_drums: int, longest_bar: int = 0, *, ignore_unknown: bool = False,
                   **data: Any) -> "ModelConfig":
        """The config `python -m train` builds from `cfg.model` and `cfg.window`: the window's bar and
        phrase; `max_steps_per_bar: 0` as `longest_bar`, the data's longest bar (at least the window's);
        `horizon_bars: null` as the window's bars. `data`: what the trainer reads from the data
        (the conditioning vocabularies, expressive_timing). An unknown `model.*` key is a ConfigError
        listing the known ones (`ignore_unknown`: left out, for a check that reports them itself)."""
        from omegaconf import OmegaConf

        given = OmegaConf.to_container(cfg.model, resolve=True)
        problems = unknown_keys(given)
        if problems and not ignore_unknown:
            from common.config import ConfigError

            raise ConfigError("\n".join(problems))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in given.items() if k in names}
        kwargs.update(num_drums=num_drums, steps_per_bar=int(cfg.window.steps_per_bar),
                      bars_per_phrase=int(cfg.window.bars_per_phrase))
        if not kwargs.get("max_steps_per_bar"):
            kwargs["max_steps_per_bar"] = max(int(longest_bar), kwargs["steps_per_bar"])
        if kwargs.get("horizon_bars") is None:   # null: the training window's bars, all the bar level sees here
            kwargs["horizon_bars"] = int(cfg.window.seq_len) // int(cfg.window.steps_per_bar)
        return cls(**{**kwargs, **data})


def unknown_keys(given: Mapping) -> list[str]:
    """One problem line per key of a `model` config that is no ModelConfig setting (a typo would
    otherwise be dropped silently)."""
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    known = ", ".join(sorted(n for n in names if n != "num_drums"))
    return [f"model.{k}: unknown model key (known: {known})" for k in given if k not in names]


def upgrade(stored: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a checkpoint's `model_config` dict, from any version: keys it lacks take
    their `LEGACY` value (the model it was trained as); a key no version wrote is a ValueError."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(map(str, stored)) - names)
    if unknown:
        raise ValueError(f"model_config holds keys no model version wrote: {', '.join(unknown)}")
    return ModelConfig(**{**LEGACY, **{str(k): v for k, v in stored.items()}})

