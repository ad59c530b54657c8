"""The shared layer: config composition and ConfigError, atomic writes, locks, progress, parallel execution.

The pipeline stages and the training side both import from here; nothing here imports either.
"""
