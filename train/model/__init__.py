"""The drum model: `HierarchicalDrumModel(ModelConfig(...))`, its loss, and sampling from it.

    from train.model import HierarchicalDrumModel, ModelConfig, compute_loss, sample

Modules (docs/model.md, "Where the code is"): config (ModelConfig, upgrade), model (the model),
levels (GRU/LSTM/Transformer levels), features (pooling, lookback input), heads (output heads),
expressive (velocity and timing heads), conditioning (labels and their ids), loss (compute_loss),
incremental (step-by-step generation), sampling (what generate, evaluate and the style classifier
share).
"""
from train.model.config import LEGACY, ModelConfig, upgrade
from train.model.heads import HEADS, StepHead, make_head, register
from train.model.incremental import GenerationState
from train.model.loss import DEFAULT_LOSS_WEIGHTS, LEVEL_LOSSES, compute_loss
from train.model.model import HierarchicalDrumModel
from train.model.sampling import guidance_of, played_values, sample, sample_hits, torch_threads
from train.model.features import lookback_features, pool_bars, pool_phrases

__all__ = ["DEFAULT_LOSS_WEIGHTS", "GenerationState", "HEADS", "HierarchicalDrumModel", "LEGACY", "LEVEL_LOSSES",
           "ModelConfig", "StepHead", "compute_loss", "guidance_of", "lookback_features", "make_head",
           "played_values", "pool_bars", "pool_phrases", "register", "sample", "sample_hits", "torch_threads",
           "upgrade"]
