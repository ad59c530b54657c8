"""Training: the model, the data it reads (ready arrays), the loop, checkpoints, DDP, optimizers, rewards.

`python -m train` runs `train.training.trainer.fit`. Public entry points: `train.model.
HierarchicalDrumModel`, `train.training.data.CompleteHierarchicalDrumDataset` / `get_complete_rl_dataloader`.
"""
