#!/usr/bin/env bash
# Issue 22's per-example comparison on the ResNet-20s at full size, for a GPU (the CPU needs hours per 500
# examples and model): official AutoAttack and `fast` on the first N test images of each shipped ResNet-20,
# through benchmarks/never_weaker.py, results exported to a folder.
#
#   bash benchmarks/gpu-never-weaker.sh OUT_DIR [PREVIOUS_ARCHIVE.jsonl.gz ...]
#
# - AutoAttack standard on the first N (default 2000) in batches of 1,000 and `fast` in batches of 256 (the
#   CPU engine's default, so that the CPU reads the same runs back), PSSiLU first (the model with misses at
#   500), until BUDGET seconds are spent; each model's rows go to OUT_DIR/never-weaker-resnet20-N.json.
# - Every run, finished or not, is exported: OUT_DIR/cuda-never-weaker.jsonl.gz (finished) and
#   OUT_DIR/cuda-never-weaker-unfinished.jsonl.gz (stored batches of the one under way). Pass both back as
#   PREVIOUS_ARCHIVE to go on where it stopped. On the CPU afterwards, `robench import` them into a store and
#   run `benchmarks/never_weaker.py --n N --batch-size 256 --store S --reference S CHECKPOINT ...`: it reads
#   every run back and writes the committed JSON.
#
# The GPU image lacks robench's dependencies: fill wheels/ as benchmarks/gpu.sh's header says and carry it.
# A dry run on the CPU with a LeNet5 and tiny n:
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu-never-weaker.sh /tmp/nw-dry
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu-never-weaker.sh OUT_DIR [PREVIOUS_ARCHIVE.jsonl.gz ...]}
shift
DEVICE=${DEVICE:-cuda}  # the name of the exported files; robench picks cuda where there is one
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-540}  # seconds for the whole script
N=${N:-2000}
cd "$(dirname "$0")/.."
NAME=gpu-never-weaker.sh
source benchmarks/gpu-setup.sh

STORE=$OUT/never-weaker.sqlite
rm -f "$STORE" "$STORE"-*
for prev in "$@"; do $PY -m robench import "$prev" --store "$STORE" >> "$OUT/gpu.log" 2>&1; done
if [ "$QUICK" = 1 ]; then
  N=20
  CKS=(checkpoints/lenet5-relu-pgd-at.safetensors)
else
  CKS=(checkpoints/resnet20-pssilu-pgd-at.safetensors checkpoints/resnet20-psoftplus-pgd-at.safetensors
       checkpoints/resnet20-splash-pgd-at.safetensors checkpoints/resnet20-silu-pgd-at.safetensors
       checkpoints/resnet20-relu-pgd-at.safetensors)
fi
for ck in "${CKS[@]}"; do
  REMAIN=$(( $(left) - 40 ))  # keep time for the export
  if [ "$REMAIN" -lt 30 ]; then log "out of time before $ck"; break; fi
  log "$ck: AutoAttack and fast on the first $N ($REMAIN s left)"
  timeout "$REMAIN" $PY benchmarks/never_weaker.py --n "$N" --batch-size 256 --store "$STORE" --reference "$STORE" \
    --out "$OUT/never-weaker-resnet20-$N.json" "$ck" 2>&1 | tee -a "$OUT/gpu.log" || log "$ck stopped (status $?)"
done
$PY -m robench export "$OUT/$DEVICE-never-weaker.jsonl.gz" --store "$STORE" | tee -a "$OUT/gpu.log"
$PY -m robench export "$OUT/$DEVICE-never-weaker-unfinished.jsonl.gz" --unfinished --store "$STORE" | tee -a "$OUT/gpu.log"
rm -f "$STORE" "$STORE"-*
log "done"
