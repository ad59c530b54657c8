"""Generation speed: seconds per generated step with the incremental path (carried RNN states /
ring KV cache, bars and phrases pooled as they complete) against re-running the full forward
pass on the whole prefix for every step (the naive path). Prints JSON.

    python -m benchmarks.generate                    # gru, lstm, transformer; batch 1, 1 thread
    python -m benchmarks.generate --backends gru --steps 256 1024

The incremental figure at N is the median time of the generated steps N−window .. N−1 of one
4,096-step generation (median: robust to other processes on a shared machine; "flat" = it does not grow with N). The naive path is timed
on a sample: one full forward over a prefix of N steps (the cost of generating step N that way),
median of `--naive-repeats`; its per-step cost at 2,048 is therefore measured, not extrapolated,
but the naive total for a whole generation would be the sum over all N (not run).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from train.model import HierarchicalDrumModel, sample_hits

BACKENDS = {"gru": dict(rnn_type="gru"), "lstm": dict(rnn_type="lstm"),
            "transformer": dict(use_transformer=True)}


def build(backend: str, args) -> HierarchicalDrumModel:
    torch.manual_seed(0)
    return HierarchicalDrumModel.from_config(dict(
        num_drums=args.drums, step_hidden_dim=args.hidden, bar_hidden_dim=args.hidden, phrase_hidden_dim=args.hidden,
        num_layers=args.layers, dropout=0.1, steps_per_bar=16, bars_per_phrase=4, nhead=4, max_context=args.context,
        lookback_bars=0 if backend == "transformer" else args.lookback, horizon_bars=args.horizon_bars,
        **BACKENDS[backend])).eval()


@torch.no_grad()
def incremental_step_times(m: HierarchicalDrumModel, length: int, seed: int = 0) -> list[float]:
    """Seconds for each generated step (sample + one model.step), as generate() does them."""
    gen = torch.Generator().manual_seed(seed)
    state = m.init_state(1, t=-1)
    logits = m.step(torch.zeros(1, m.num_drums), state)
    times = []
    for _ in range(length):
        t0 = time.perf_counter()
        x = sample_hits(logits, 1.0, None, gen)
        logits = m.step(x, state)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def naive_step_time(m: HierarchicalDrumModel, n: int, repeats: int) -> float:
    """Seconds to get step n's logits by a full forward pass over the n-step prefix."""
    prefix = (torch.rand(1, n, m.num_drums, generator=torch.Generator().manual_seed(n)) < 0.2).float()
    m(prefix[:, :16])                                      # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m(prefix)[0][:, -1]
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--steps", nargs="+", type=int, default=[256, 1024, 4096])
    p.add_argument("--compare-at", type=int, default=2048)
    p.add_argument("--window", type=int, default=128, help="steps averaged before each N")
    p.add_argument("--naive-repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--drums", type=int, default=9)
    p.add_argument("--lookback", type=int, default=2, help="lookback_bars of the RNNs (as conf/model/gru.yaml)")
    p.add_argument("--context", type=int, default=256, help="Transformer max_context (= window.seq_len)")
    p.add_argument("--horizon-bars", type=int, default=0,
                   help="bars the bar/phrase levels see (16 = a 256-step window; 0 = unbounded)")
    args = p.parse_args()
    torch.set_num_threads(1)

    marks = sorted(set(args.steps) | {args.compare_at})
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "model": {"hidden": args.hidden, "layers": args.layers, "drums": args.drums,
                        "steps_per_bar": 16, "bars_per_phrase": 4, "max_context": args.context,
                        "batch": 1, "dtype": "float32", "horizon_bars": args.horizon_bars},
              "method": ("incremental: median s/step over the `window` steps before N in one generation; "
                         "naive: median s of one full forward over an N-step prefix, measured at each N"),
              "window": args.window, "backends": {}}
    for backend in args.backends:
        m = build(backend, args)
        times = incremental_step_times(m, max(marks))
        inc = {n: statistics.median(times[n - args.window:n]) for n in marks}
        naive = {n: naive_step_time(m, n, args.naive_repeats) for n in marks}
        result["backends"][backend] = {
            "params": sum(q.numel() for q in m.parameters()),
            "incremental_s_per_step": {str(n): inc[n] for n in args.steps},
            "flatness_last_over_first": inc[max(args.steps)] / inc[min(args.steps)],
            "naive_s_per_step": {str(n): naive[n] for n in marks},
            f"speedup_at_{args.compare_at}": naive[args.compare_at] / inc[args.compare_at],
            "generated_steps_total_s": sum(times),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
