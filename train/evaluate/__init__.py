"""Evaluation: held-out scores, baselines, generated-vs-real comparison, plots.

`python -m train.evaluate` runs `train.evaluate.run.main`; `baselines` holds the cheap predictors the
model is measured against, `scores` the NLL/F1 accumulator and set comparisons, `next_step` and
`generated` the two halves of the evaluation, `plots` the charts (piano rolls: train/report/rolls.py).
"""
