"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
HierarchicalDrumModel: shapes, strict causality, incremental == full forward, generation.
The rest is tests/unit/test_model.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.drums import DrumMap
from pipeline.midi import read_midi
from train.model import HierarchicalDrumModel


def test_importing_train_stays_light():
    code = "import sys, train; assert 'torch' not in sys.modules, 'train imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def groove_windows(groove_dir, num: int, length: int) -> torch.Tensor:
    """The first `length` 16th-note steps of `num` real Groove beats, GMD-9 classes (velocities/127)."""
    files = sorted((groove_dir / "drummer1" / "session1").glob("*_beat_4-4.mid"))[:num]
    rolls_ = [read_midi(path, DrumMap.default(), steps_per_quarter=4) for path in files]
    assert len(rolls_) == num and all(r.hits.shape[0] >= length for r in rolls_), groove_dir
    return torch.from_numpy(np.stack([r.velocity[:length] for r in rolls_]).astype(np.float32) / 127)


@pytest.mark.groove
@pytest.mark.parametrize("backend", ["gru", "transformer"])
def test_tiny_model_overfits_one_groove_batch(groove_dir, backend):
    torch.manual_seed(0)
    step = groove_windows(groove_dir, 4, 64)
    assert (step > 0).sum() > 200                         # real drumming, not an empty roll
    batch = {"step": step, "mask": torch.ones(step.shape[:2], dtype=torch.bool)}
    kw = dict(use_transformer=True, nhead=2) if backend == "transformer" else {}
    m = HierarchicalDrumModel.from_config(dict(num_drums=9, step_hidden_dim=48, bar_hidden_dim=32, phrase_hidden_dim=32,
                                                num_layers=1, dropout=0.0, steps_per_bar=16, bars_per_phrase=2,
                                                max_context=64, **kw))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    weights = {"step": 1.0, "bar": 1.0, "phrase": 1.0}
    first = m.compute_loss(m(step), batch, weights)[0].item()
    for _ in range(300):                 # stops as soon as the loss has fallen by 90 %
        total, terms = m.compute_loss(m(step), batch, weights)
        if total.item() <= 0.1 * first:
            break
        opt.zero_grad()
        total.backward()
        opt.step()
    m.eval()                             # the trained model, without dropout, on the same batch
    final, terms = m.compute_loss(m(step), batch, weights)
    assert final.item() <= 0.1 * first, (first, final.item(), terms)
