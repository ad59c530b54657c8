"""`python -m train.evaluate.style_classifier [checkpoint=…] [style_classifier.*]`: is conditioned
generation recognisable as the style it was asked for?

A multinomial logistic regression (torch, full batch; class-balanced so every style has the same
prior) is fitted on the rhythm metrics (`kernels.window_metrics`, every one, flattened and
standardised) of real train windows of the `style_classifier.styles` most common styles of the
train split (top-level style, train/model/conditioning.py). It reports
- its accuracy on the real validation windows of those styles (how far metrics tell styles apart),
- with a style-conditioned checkpoint, the fraction of generated windows (`samples_per_style`
  per style, `seq_len` steps, conditioned on that style and `beat_type`) it names as the style
  asked for; `checkpoint=null`: the real-window part only.
Writes `style_classifier.out` (JSON) and prints a table. Config: `conf/style_classifier.yaml`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

import common.config
from kernels import window_metrics
from common.atomic import atomic_path
from train.model import conditioning as C
from train.training.data import LENGTH, SONG, CompleteHierarchicalDrumDataset
from common.config import ConfigError

log = logging.getLogger(__name__)


def features(rolls: np.ndarray, lengths: np.ndarray, steps_per_bar: int) -> np.ndarray:
    """[N, F] float64: every window metric of each roll's first `length` steps, flattened."""
    rows = []
    for roll, n in zip(rolls, lengths):
        m = window_metrics((roll[:int(n)] > 0).astype(np.uint8), seq_len=int(len(roll)), stride=len(roll),
                           steps_per_bar=steps_per_bar, beats_per_bar=max(1, steps_per_bar // 4),
                           num_bars=len(roll) // steps_per_bar)
        rows.append(np.concatenate([np.asarray(m[k][0], np.float64).ravel() for k in sorted(m)]))
    return np.stack(rows) if rows else np.zeros((0, 0))


class LogisticRegression:
    """Multinomial logistic regression on standardised features, L2-penalised, class-balanced."""

    def __init__(self, weight_decay: float = 1e-3, steps: int = 200):
        self.weight_decay, self.steps = float(weight_decay), int(steps)

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> "LogisticRegression":
        self.mean, std = x.mean(0), x.std(0)
        self.std = np.where(std > 1e-9, std, 1.0)     # a constant feature carries nothing: left at 0
        X, Y = torch.as_tensor(self._scale(x)), torch.as_tensor(y, dtype=torch.long)
        counts = torch.bincount(Y, minlength=num_classes).double()
        balance = (len(Y) / (num_classes * counts.clamp(min=1)))
        self.w = torch.zeros(X.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=self.steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(X @ self.w + self.b, Y, weight=balance)
            loss = loss + self.weight_decay * self.w.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return self

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.std

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.int64)
        with torch.no_grad():
            return (torch.as_tensor(self._scale(x)) @ self.w + self.b).argmax(1).numpy()


def top_styles(ready: Path, n: int) -> list[str]:
    """The n top-level styles with the most train songs (ties: alphabetical)."""
    labels = C.read_song_labels(ready)
    songs = np.unique(np.load(ready / "windows_train.npy", allow_pickle=False)[:, SONG])
    styles = C.song_values(labels, "style", ())[songs]
    names, counts = np.unique(styles[styles != ""], return_counts=True)
    order = sorted(zip(-counts, names))
    return [str(name) for _, name in order[:n]]


def real_windows(ready: Path, split: str, styles: list[str], cfg: DictConfig, seed: int,
                 max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F], style index [N]) of the split's windows of `styles` (at most
    `max_windows` per style, drawn with `seed`)."""
    w = cfg.window
    ds = CompleteHierarchicalDrumDataset(ready, split, seq_len=int(w.seq_len), stride=int(w.stride),
                                         steps_per_bar=int(w.steps_per_bar), bars_per_phrase=int(w.bars_per_phrase),
                                         metrics=[])
    song_style = C.song_values(C.read_song_labels(ready), "style", ())
    win_style = song_style[ds.windows[:, SONG]]
    rng = np.random.default_rng(seed)
    picked, label = [], []
    for k, style in enumerate(styles):
        idx = np.flatnonzero(win_style == style)
        if len(idx) > max_windows > 0:
            idx = np.sort(rng.choice(idx, max_windows, replace=False))
        picked.append(idx)
        label.append(np.full(len(idx), k))
    idx, label = np.concatenate(picked), np.concatenate(label)
    feats = []
    for a in range(0, len(idx), 512):          # a batch at a time: [512, L, D] float32 each
        batch = ds.get_batch(idx[a:a + 512])
        feats.append(features(batch["step"].numpy(), ds.windows[idx[a:a + 512], LENGTH], int(w.steps_per_bar)))
    return (np.concatenate(feats) if feats else np.zeros((0, 0))), label


def generated_windows(model, styles: list[str], sc: DictConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, style index) of `samples_per_style` sequences generated per style."""
    from train.model import guidance_of, sample, torch_threads

    vocab = model.config.get("conditioning") or {}
    if "style" not in vocab:
        raise ConfigError(f"checkpoint: its model is not conditioned on style (conditions: {sorted(vocab) or 'none'}); "
                          "train with model.conditioning=[style,beat_type,bpm], or checkpoint=null for real windows only")
    missing = [s for s in styles if s not in vocab["style"]]
    if missing:
        raise ConfigError(f"style_classifier: styles {missing} are not in the model's vocabulary "
                          f"(known: {', '.join(vocab['style'])})")
    spb = int(model.config["steps_per_bar"])
    feats, label = [], []
    for k, style in enumerate(styles):
        try:
            cond = C.request_ids(vocab, model.config.get("bpm_buckets", ()),
                                 {"style": style, "beat_type": sc.beat_type, "bpm": sc.bpm})
        except ValueError as e:
            raise ConfigError(f"style_classifier.{e}") from None
        with torch_threads(1):   # step-by-step sampling: a second thread only spin-waits (generate.num_threads)
            rolls = sample(model, int(sc.samples_per_style), seq_len, num_drums=model.num_drums,
                           temperature=float(sc.temperature), top_k=sc.top_k, top_p=sc.top_p,
                           seed=int(sc.seed) + 1000 * k, cond=cond, guidance=guidance_of(sc, cond))
        feats.append(features(rolls, np.full(len(rolls), seq_len), spb))
        label.append(np.full(len(rolls), k))
    return np.concatenate(feats), np.concatenate(label)


def _accuracy(clf: LogisticRegression, x: np.ndarray, y: np.ndarray, styles: list[str]) -> dict:
    pred = clf.predict(x)
    per = {s: float((pred[y == k] == k).mean()) if (y == k).any() else None for k, s in enumerate(styles)}
    confusion = np.zeros((len(styles), len(styles)), np.int64)
    np.add.at(confusion, (y, pred), 1)
    return {"accuracy": float((pred == y).mean()) if len(y) else None, "windows": int(len(y)),
            "per_style": per, "confusion": confusion.tolist()}


def run(cfg: DictConfig) -> dict:
    from train.training.data import resolve_ready_dir

    sc = cfg.style_classifier
    ready = resolve_ready_dir(cfg.paths.ready)
    styles = list(sc.styles) if not isinstance(sc.styles, int) else top_styles(ready, int(sc.styles))
    if len(styles) < 2:
        raise ConfigError(f"style_classifier.styles: need at least 2 styles, got {styles}")
    x, y = real_windows(ready, "train", styles, cfg, int(sc.seed), int(sc.max_windows))
    clf = LogisticRegression(float(sc.weight_decay), int(sc.steps)).fit(x, y, len(styles))
    result = {"styles": styles, "train_windows": int(len(y)),
              "validation": _accuracy(clf, *real_windows(ready, "validation", styles, cfg, int(sc.seed), 0), styles)}
    if cfg.checkpoint:
        from train.training.checkpoint import load_for_inference, train_hint

        model, _, path = load_for_inference(cfg.checkpoint, train_hint(cfg))
        result["checkpoint"] = str(path)
        result["generated"] = _accuracy(clf, *generated_windows(model, styles, sc, int(cfg.window.seq_len)), styles)
    out = Path(sc.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def table(result: dict) -> str:
    """A markdown table: accuracy per style on real validation and generated windows."""
    gen = result.get("generated")
    lines = ["| style | real validation | generated (named as asked) |", "|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}%"   # noqa: E731
    for s in result["styles"]:
        lines.append(f"| {s} | {fmt(result['validation']['per_style'][s])} | "
                     f"{fmt(gen['per_style'][s]) if gen else '–'} |")
    lines.append(f"| **all** | {fmt(result['validation']['accuracy'])} ({result['validation']['windows']} windows) | "
                 f"{fmt(gen['accuracy']) + ' (' + str(gen['windows']) + ' windows)' if gen else '–'} |")
    return "\n".join(lines)


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="style_classifier", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("style_classifier", FileNotFoundError, ValueError), \
            common.config.exit_on("style_classifier", ConfigError, code=2):
        result = run(cfg)
    print(table(result))
    print(f"written: {result['out']}")


if __name__ == "__main__":
    main()
