"""`python -m train.generate` end to end: how much of its wall time is sampling; prints JSON.

    python benchmarks/startup.py [--bars 16] [--samples 4] [--repeat 3] [--checkpoint runs/x/checkpoints/best.pt]
        [--compare /tmp/old-checkout] [--compare-override generate.num_threads=0] [--override +experiment=groove_cpu ...]

A checkpoint of the default model config (conf/model/gru.yaml, untrained: sampling costs the same)
is saved once, or `--checkpoint` names a trained one: an untrained model plays about half of all
steps on every drum, so its audio previews (FluidSynth, when installed) cost several times what a
trained model's sparser parts do. Then `python -m train.generate … generate.bars=16` runs in a fresh
interpreter per case, with and without pictures (`generate.plots`), `--repeat` times. The child
reports its phase times (train.generate.run's `timings`: load, sample, write, plots = sheet.png,
page = index.html's rolls and audio) and how long the interpreter took to get there (imports,
Hydra); the parent measures the whole process: its wall time and the CPU time of it and its
children (FluidSynth). `--compare DIR` runs a checkout of other code (e.g. `git archive <commit>`)
alternately with this one, same checkpoint and overrides (plus `--compare-override`: `--compare .
--compare-override KEY=VALUE` sets this code against itself with one setting changed), so both
see the same machine load.
Figures: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import hydra
from train.generate.run import run
from omegaconf import DictConfig
import common.config
@hydra.main(config_path=str(common.config.CONF_DIR), config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    t1 = time.perf_counter()
    result = run(cfg)
    print(json.dumps({"to_run_s": round(t1 - t0, 3), **result["timings"]}))
sys.argv = ["generate", *sys.argv[1:]]
main()
"""


def make_checkpoint(path: Path) -> Path:
    import torch

    from common.config import compose
    from pipeline.drums import DrumMap
    from train.training.checkpoint import save_checkpoint
    from train.training.build import build_model

    cfg = compose([])
    torch.manual_seed(0)
    dm = DrumMap.default()
    model = build_model(cfg, dm.num_drums)
    from omegaconf import OmegaConf
    ckpt = {"model": model.state_dict(), "model_config": model.config,
            "config": OmegaConf.to_container(cfg, resolve=True), "drum_names": list(dm.names),
            "drum_pitches": list(dm.pitches), "steps_per_quarter": 4, "epoch": 0, "global_step": 0}
    return save_checkpoint(path, ckpt)


def one(repo: Path, ckpt: Path, out: Path, bars: int, samples: int, plots: bool, overrides: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)   # else a repeat finds its audio rendered (cached by MIDI hash)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *overrides, f"checkpoint={ckpt}", f"generate.out_dir={out}",
                        f"generate.bars={bars}", f"generate.num_samples={samples}", f"generate.plots={plots}",
                        f"hydra.run.dir={out}/hydra"], cwd=repo, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(repo)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    child = json.loads(r.stdout.strip().splitlines()[-1])
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"code": f"{repo} {' '.join(overrides)}".strip(), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), **child,
            "outside_sampling_fraction": round(1 - child["sample_s"] / wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: an untrained default model)")
    ap.add_argument("--plots", nargs="+", default=["true", "false"], choices=["true", "false"],
                    help="the generate.plots cases to run")
    ap.add_argument("--compare", type=Path, help="a checkout of other code, run alternately with this one")
    ap.add_argument("--compare-override", nargs="*", default=[], help="overrides of the --compare runs only")
    ap.add_argument("--override", nargs="*", default=[], help="more generate overrides, e.g. +experiment=groove_cpu")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    ckpt = args.checkpoint.resolve() if args.checkpoint else make_checkpoint(work / "best.pt")
    cases = [(args.compare.resolve(), args.override + args.compare_override), (REPO, args.override)] \
        if args.compare else [(REPO, args.override)]
    print(json.dumps({"load_avg": os.getloadavg(), "bars": args.bars, "samples": args.samples,
                      "checkpoint": str(args.checkpoint or "untrained default model"), "overrides": args.override,
                      "code": [f"{r} {' '.join(o)}".strip() for r, o in cases]}))
    for plots in (p == "true" for p in args.plots):
        runs = [[] for _ in cases]
        for _ in range(args.repeat):
            for done, (repo, overrides) in zip(runs, cases):      # alternating: both see the same weather
                done.append(one(repo, ckpt, work / "out", args.bars, args.samples, plots, overrides))
                print(json.dumps({"plots": plots, **done[-1], "load_avg": os.getloadavg()}), flush=True)
        for done in runs:
            med = {k: statistics.median(r[k] for r in done) for k in done[0] if k != "code"}
            print(json.dumps({"plots": plots, "code": done[0]["code"], "median": med, "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
