"""Hyperparameter search with Optuna (`python -m train.tune`); `train.tune.study` holds it."""
