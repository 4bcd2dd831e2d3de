#!/usr/bin/env bash
# One device call: the CUDA paths of every mixer and `gkabench check --quick` on the GPU.
# Run from the repo root on the device with carry [".whl"] (fla 0.6.0 wheels); logs land in $OUT.
# Every step streams its rows, so a step cut by its time limit still shows what it finished.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160}
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.log"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a "$OUT/env.log"
timeout ${SMOKE_S:-150} python3 scripts/cuda_mixers_smoke.py 2>&1 | tee "$OUT/cuda_mixers.log"
timeout ${CHECK_S:-120} python3 -m gkabench.cli check --quick --ops attention,gated_deltanet,gla,mamba2,mesanet --lift-fla-guard --json "$OUT/check_baselines.json" 2>&1 | tee "$OUT/check_baselines.log"
timeout ${GKA_S:-60} python3 -m gkabench.cli check --quick --ops gka --json "$OUT/check_gka.json" 2>&1 | tee "$OUT/check_gka.log"
