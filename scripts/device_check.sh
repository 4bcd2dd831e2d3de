#!/usr/bin/env bash
# One device call: the CUDA paths of every mixer and `gkabench check --quick` on the GPU.
#   run(command="bash scripts/device_check.sh", carry=[".whl", ".triton_cache"])
# Every step streams its rows, so a step cut by its time limit still shows what it finished.
set -uo pipefail
source scripts/device_prelude.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.log"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a "$OUT/env.log"
timeout ${SMOKE_S:-240} python3 scripts/cuda_mixers_smoke.py 2>&1 | tee "$OUT/cuda_mixers.log"
timeout ${CHECK_S:-150} python3 -m gkabench.cli check --quick --ops attention,gated_deltanet,gla,mamba2,mesanet --lift-fla-guard --json "$OUT/check_baselines.json" 2>&1 | tee "$OUT/check_baselines.log"
timeout ${GKA_S:-60} python3 -m gkabench.cli check --quick --ops gka --json "$OUT/check_gka.json" 2>&1 | tee "$OUT/check_gka.log"
# one archive of the logs and JSON (the device tool returns at most 8 files; the Triton cache parts need room)
(cd "$OUT" && tar czf device_check_logs.tgz *.log *.json && rm -f *.log *.json)
source scripts/device_epilogue.sh
