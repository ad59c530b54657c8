"""ModelConfig (train/model/config.py): the one home of the model's defaults, mirrored by
conf/model/; old checkpoints' configs through `upgrade`; the output-head registry."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from common.config import CONF_DIR, ConfigError, compose
from train.model import HEADS, LEGACY, HierarchicalDrumModel, ModelConfig, StepHead, register, upgrade
from train.model.config import FROM_DATA

FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def python_default(name: str):
    f = FIELDS[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def base_yaml() -> dict:
    """conf/model/_base.yaml as `python -m train` reads it: its ${window.*} interpolations resolved
    against the root config's window."""
    window = compose([]).window
    merged = OmegaConf.merge({"window": window}, {"model": OmegaConf.load(CONF_DIR / "model" / "_base.yaml")})
    return OmegaConf.to_container(merged, resolve=True)["model"]


def test_python_defaults_equal_the_base_yaml():
    yaml = base_yaml()
    assert set(yaml) == set(FIELDS) - set(FROM_DATA), "conf/model/_base.yaml states every setting but the data's"
    disagree = {k: (python_default(k), v) for k, v in yaml.items() if python_default(k) != v}
    assert not disagree, f"ModelConfig default vs conf/model/_base.yaml: {disagree}"
    assert ModelConfig(num_drums=9) == ModelConfig(num_drums=9, **yaml)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "_base"))
def test_every_model_file_states_only_settings_and_builds(name):
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    raw.pop("defaults", None)
    assert set(raw) <= set(FIELDS) - set(FROM_DATA), sorted(set(raw) - set(FIELDS))
    cfg = compose([f"model={name}"])
    config = ModelConfig.from_hydra(cfg, 9)
    for key, value in raw.items():       # what the file states is what the model gets
        assert getattr(config, key) == value, key
    default = ModelConfig(9)
    for key in set(FIELDS) - set(raw) - set(FROM_DATA) - {"steps_per_bar", "bars_per_phrase", "max_context",
                                                           "horizon_bars", "max_steps_per_bar"}:
        assert getattr(config, key) == getattr(default, key), key    # the rest: the defaults
    with torch.device("meta"):
        HierarchicalDrumModel(config)


def test_unknown_hydra_key_is_a_config_error_listing_the_known():
    cfg = compose(["+model.hiden_dim=3"])
    with pytest.raises(ConfigError, match=r"model.hiden_dim: unknown model key \(known: .*step_hidden_dim"):
        ModelConfig.from_hydra(cfg, 9)
    assert ModelConfig.from_hydra(cfg, 9, ignore_unknown=True).step_hidden_dim == 128


def test_from_hydra_fills_the_window_and_data_values():
    cfg = compose(["window.seq_len=64", "window.steps_per_bar=12", "window.bars_per_phrase=2"])
    config = ModelConfig.from_hydra(cfg, 7, longest_bar=20, expressive_timing=False)
    assert (config.num_drums, config.steps_per_bar, config.bars_per_phrase) == (7, 12, 2)
    assert config.max_context == 64 and config.horizon_bars == 64 // 12 and config.max_steps_per_bar == 20
    assert config.expressive_timing is False


def test_upgrade_fills_missing_keys_with_what_old_checkpoints_were_trained_as():
    """A config dict from before most keys existed builds the model that code built (LEGACY), not
    today's defaults; a key no version wrote is refused."""
    old = {"num_drums": 9, "step_hidden_dim": 16, "bar_hidden_dim": 16, "phrase_hidden_dim": 16}
    config = upgrade(old)
    assert config.output == "independent" and not config.expressive and config.embedding_std == 1.0
    assert config.horizon_bars == 0 and config.max_context == 512 and not config.phrase_position
    assert config == ModelConfig(**{**LEGACY, **old})
    assert LEGACY["output"] != python_default("output")       # the two sets differ: each has its job
    with pytest.raises(ValueError, match="no model version wrote: hiden"):
        upgrade({**old, "hiden": 3})


def test_to_dict_is_plain_and_round_trips_through_a_weights_only_load(tmp_path):
    config = ModelConfig(9, conditioning={"style": ["funk", "rock"]}, num_layers=1, step_hidden_dim=16,
                         bar_hidden_dim=16, phrase_hidden_dim=16)
    torch.manual_seed(0)
    m = HierarchicalDrumModel(config)
    torch.save({"model": m.state_dict(), "model_config": m.config}, tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ck["model_config"] == m.config and upgrade(ck["model_config"]) == m.model_config
    m2 = HierarchicalDrumModel.from_config(ck["model_config"])
    m2.load_state_dict(ck["model"])
    x = (torch.rand(1, 20, 9) < 0.3).float()
    assert torch.equal(m.eval()(x)[0], m2.eval()(x)[0])


def test_settings_without_effect_are_stored_neutral():
    """Two configs that build the same model store the same dict (a resume compares them)."""
    off = ModelConfig(9, expressive=False, expressive_history=True, hierarchy=False, context_input=True,
                      bpm_buckets=[60.0], cond_dropout=0.5).to_dict()
    plain = ModelConfig(9, expressive=False, hierarchy=False, bpm_buckets=[], cond_dropout=0.0,
                        expressive_spread=False, expressive_history=False).to_dict()
    assert off == plain and off["horizon_bars"] == 0


def test_a_registered_head_is_a_valid_output_with_no_other_change():
    """Adding an output head is one class in train/model/heads.py (docs/model.md)."""

    @register
    class AllOffHead(StepHead):
        output = "test_all_off"

        def __init__(self, num_drums: int):
            super().__init__(num_drums)
            self.num_params = 1

        def log_prob(self, params, x):
            return -(x > 0).any(-1).to(params.dtype) * 1e3 + 0 * params[..., 0]

    try:
        m = HierarchicalDrumModel(ModelConfig(4, output="test_all_off", step_hidden_dim=8, bar_hidden_dim=8,
                                              phrase_hidden_dim=8, num_layers=1, expressive=False))
        x = torch.zeros(1, 8, 4)
        assert m(x)[0].shape == (1, 8, 1) and m.step_log_prob(x).eq(0).all()
    finally:
        del HEADS["test_all_off"]
    with pytest.raises(ValueError, match="output must be one of"):
        ModelConfig(4, output="test_all_off")
