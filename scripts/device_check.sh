#!/usr/bin/env bash
# One device call: the CUDA paths of every mixer and `gkabench check` on the GPU.
# Run from the repo root on the device with carry [".whl"] (fla 0.6.0 wheels); logs land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.log"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a "$OUT/env.log"
python3 -m gkabench.cli layers 2>&1 | tee "$OUT/layers.log"
timeout 240 python3 -m gkabench.cli check --json "$OUT/check.json" 2>&1 | tee "$OUT/check.log"
timeout 120 python3 -m gkabench.cli check --ops gated_deltanet,mamba2,gla --lift-fla-guard --json "$OUT/check_lifted.json" 2>&1 | tee "$OUT/check_lifted.log"
timeout 150 python3 scripts/cuda_mixers_smoke.py 2>&1 | tee "$OUT/cuda_mixers.log"
