#!/usr/bin/env bash
# Issue 25's GPU checks in one prepared run (about 8 minutes on one NVIDIA H200), results to a folder:
#
#   bash benchmarks/gpu.sh OUT_DIR [PREVIOUS_ARCHIVE.jsonl.gz]
#
# 1. benchmarks/attacks.py --device cuda on LeNet5 (robench vs torchattacks, Foolbox, pyautoattack, fast vs
#    AutoAttack, cycles, scaling) and on wrn-28-10 with random CIFAR-shaped inputs (with the roofline:
#    attack FLOP/s against the measured bf16 and tf32 matmul rates) -> OUT_DIR/cuda-lenet5.json,
#    OUT_DIR/cuda-wrn-28-10.json;
# 2. torchrun --nproc-per-node 1 (nccl) against a plain run, per-example outcomes compared
#    -> OUT_DIR/cuda-torchrun.json;
# 3. the full-scale evaluation (suites/gpu-full.toml: AutoAttack on all 10,000 test images of every shipped
#    checkpoint) for the time left, exported to OUT_DIR/cuda-full.jsonl.gz; pass that archive back as
#    PREVIOUS_ARCHIVE to continue where it stopped (the store resumes per batch), and `robench import` it
#    into results/leaderboard.sqlite to back the committed leaderboard.
#
# The GPU image has torch but not robench's other dependencies. Fill the git-ignored wheels/ first, on a
# machine with the package registries (same Python version as the GPU image):
#   pip download --no-deps -d wheels/ pyautoattack==0.2.0 foolbox==3.3.4 eagerpy==0.30.0 torchattacks==3.5.1 \
#     typer==0.29.2 click shellingham rich==15.0.0 markdown-it-py mdurl pygments pandas numpy scipy \
#     matplotlib safetensors jinja2 markupsafe markdown gitpython gitdb smmap requests
# and carry wheels/ (device tool: carry ["wheels"]). A dry run on the CPU with tiny n:
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh /tmp/gpu-dry
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [PREVIOUS_ARCHIVE.jsonl.gz]}
PREV=${2:-}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-480}  # seconds for the whole script
cd "$(dirname "$0")/.."
NAME=gpu.sh
source benchmarks/gpu-setup.sh

if [ "$QUICK" = 1 ]; then
  SMALL=(--n 20 --batch-size 10 --aa-n 10 --repeats 1 --aa-repeats 1 --skip scaling --skip cycles)
  WRN=()
  EXAMPLES=40
else
  SMALL=(--aa-repeats 2 --repeats 3)
  WRN=(--skip fast --skip cycles --aa-repeats 1 --repeats 3)
  EXAMPLES=10000
fi

log "1/3 attacks.py on LeNet5"
timeout 170 $PY benchmarks/attacks.py --device "$DEVICE" --model lenet5 "${SMALL[@]}" \
  --out "$OUT/$DEVICE-lenet5.json" 2>&1 | tee -a "$OUT/gpu.log" || log "LeNet5 benchmark stopped (status $?)"
log "1/3 attacks.py on wrn-28-10 (random CIFAR-shaped inputs)"
[ "$QUICK" = 1 ] && log "(skipped in a quick run: wrn-28-10 takes minutes per step batch on a CPU)" || timeout 170 $PY benchmarks/attacks.py --device "$DEVICE" --model wrn-28-10 "${WRN[@]}" \
  --out "$OUT/$DEVICE-wrn-28-10.json" 2>&1 | tee -a "$OUT/gpu.log" || log "wrn-28-10 benchmark stopped (status $?)"

log "2/3 torchrun --nproc-per-node 1 against a plain run"
CK=checkpoints/lenet5-relu-pgd-at.safetensors
rm -f "$OUT/plain.sqlite" "$OUT/torchrun.sqlite"
$PY -m robench eval "$CK" --examples "$EXAMPLES" --eps 0.1 --attack pgd --device "$DEVICE" --quiet \
  --store "$OUT/plain.sqlite" >> "$OUT/gpu.log" 2>&1
$PY -m torch.distributed.run --nproc-per-node 1 -m robench eval "$CK" --examples "$EXAMPLES" --eps 0.1 \
  --attack pgd --device "$DEVICE" --quiet --store "$OUT/torchrun.sqlite" >> "$OUT/gpu.log" 2>&1
$PY - "$OUT" "$DEVICE" <<'EOF' | tee -a "$OUT/gpu.log"
import json, sys
from robench.store import Store
out, device = sys.argv[1], sys.argv[2]
res = {}
for name in ("plain", "torchrun"):
    with Store(f"{out}/{name}.sqlite", readonly=True) as st:
        runs = st.runs()
        o = st.outcomes(int(runs.run_id.iloc[-1]))
        res[name] = {"n": int(runs.n.iloc[-1]), "wall_s": float(runs.wall_time.iloc[-1]),
                     "robust": dict(zip(map(int, o.idx), map(int, o.robust)))}
same = res["plain"]["robust"] == res["torchrun"]["robust"]
summary = {"device": device, "identical_outcomes": same, **{k: {"n": v["n"], "wall_s": v["wall_s"],
           "robust": sum(v["robust"].values())} for k, v in res.items()}}
json.dump(summary, open(f"{out}/{device}-torchrun.json", "w"), indent=1)
print("torchrun vs plain:", summary)
EOF
rm -f "$OUT/plain.sqlite" "$OUT/torchrun.sqlite"

log "3/3 the full-scale evaluation for the $(left) s left"
STORE=$OUT/full.sqlite
[ -n "$PREV" ] && $PY -m robench import "$PREV" --store "$STORE" >> "$OUT/gpu.log" 2>&1
SUITE=suites/gpu-full.toml
if [ "$QUICK" = 1 ]; then
  sed -e 's/^n = 10000/n = 20/' -e 's/^batch_size = .*/batch_size = 10/' \
      -e 's#"checkpoints/\*.safetensors", "checkpoints/seeds/\*.safetensors"#"checkpoints/lenet5-relu-*.safetensors"#' \
      "$SUITE" > "$OUT/quick-suite.toml"
  SUITE=$OUT/quick-suite.toml
fi
REMAIN=$(( $(left) - 30 ))
if [ "$REMAIN" -gt 30 ]; then
  timeout "$REMAIN" $PY -m robench eval --config "$SUITE" --device "$DEVICE" --store "$STORE" >> "$OUT/gpu.log" 2>&1 \
    || log "full-scale evaluation stopped (status $?); rerun with $OUT/$DEVICE-full.jsonl.gz as PREVIOUS_ARCHIVE"
fi
[ -f "$STORE" ] && $PY -m robench export "$OUT/$DEVICE-full.jsonl.gz" --store "$STORE" | tee -a "$OUT/gpu.log"
rm -f "$STORE" "$STORE"-*
log "done"
