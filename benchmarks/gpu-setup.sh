# Shared set-up of the GPU scripts (benchmarks/gpu.sh, benchmarks/gpu-never-weaker.sh), sourced with OUT (the
# results folder), BUDGET (seconds for the whole script) and NAME (the log's label) set: from the repository
# root it makes OUT absolute, picks the Python (PY, default .venv's), defines left (seconds of BUDGET left)
# and log (to the terminal and OUT/gpu.log), installs robench's dependencies from wheels/ where the image
# lacks them (fill wheels/ as benchmarks/gpu.sh's header says) and logs torch's view of the device.
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
if [ -z "${PY:-}" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
left() { echo $(( BUDGET - (SECONDS - START) )); }
log() { echo "[$NAME $(( SECONDS - START ))s] $*" | tee -a "$OUT/gpu.log"; }

if ! $PY -c "import pyautoattack, foolbox, eagerpy, torchattacks, typer, rich, pandas, safetensors, jinja2, markdown, scipy, matplotlib" 2>/dev/null; then
  log "installing robench's dependencies from wheels/"
  ls wheels/*.whl >/dev/null 2>&1 || { echo "wheels/ is empty: fill it as benchmarks/gpu.sh's header says." >&2; exit 2; }
  $PY -m pip install -q --no-deps --no-index wheels/*.whl
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$OUT/gpu.log"
