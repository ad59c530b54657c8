"""Training side of hierdrums: `training/` (model, data, loop), `evaluate/`, `generate/`, `tune/`.

Kept empty on purpose: importing `train` must not import torch, zarr or the data stack;
import the submodule you need (`from train.model import HierarchicalDrumModel`).
"""
