#!/usr/bin/env bash
# Usage: benchmarks/refactor_bitcheck.sh REPO OUT   (PYTHON=... to choose the interpreter)
# Is a refactor behaviour-preserving? Run it on a checkout before and one after, then compare the two
# OUT/hashes.json: a small built-in store, GRU + Transformer trained (trainer=tiny), both evaluated;
# prints a hash per checkpoint (every state_dict tensor), per metrics.csv/json and evaluation JSON.
set -euo pipefail
REPO=$1; OUT=$2; PY=${PYTHON:-python}
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$REPO"; export PYTHONPATH=$REPO
D="$OUT/data"; COMMON="paths.data_dir=$D data.corpus.num_songs=60 window.seq_len=64 window.stride=16"
$PY -m pipeline $COMMON hydra.run.dir=$OUT/hydra > "$OUT/pipeline.log" 2>&1
for m in gru transformer; do
  $PY -m train $COMMON model=$m trainer=tiny trainer.run_name=$m paths.runs=$OUT/runs hydra.run.dir=$OUT/hydra > "$OUT/train_$m.log" 2>&1
  $PY -m train.evaluate $COMMON model=$m checkpoint=$OUT/runs/$m/checkpoints evaluate.out_dir=$OUT/eval_$m evaluate.generated.max_samples=16 hydra.run.dir=$OUT/hydra > "$OUT/eval_$m.log" 2>&1
done
$PY - "$OUT" <<'PY'
import sys, hashlib, json, torch, pathlib
out = pathlib.Path(sys.argv[1]); res = {}
for p in sorted(out.rglob("*")):
    if p.suffix == ".pt":
        ck = torch.load(p, weights_only=True, map_location="cpu")
        h = hashlib.sha256()
        for k, v in sorted(ck["model"].items()): h.update(k.encode()); h.update(v.numpy().tobytes())
        h.update(repr(ck.get("optimizer", {}).get("state", {}).keys()).encode())
        res[str(p.relative_to(out))] = h.hexdigest()[:16]
    elif p.name in ("metrics.csv", "metrics.json") and "eval" not in str(p.parent) or (p.name == "metrics.json" and "eval" in str(p)):
        res[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
json.dump(res, open(out / "hashes.json", "w"), indent=1, sort_keys=True)
print(json.dumps(res, indent=1, sort_keys=True))
PY
