#!/usr/bin/env bash
# One device call: the CUDA paths of every mixer (scripts/cuda_mixers_smoke.py) and `gkabench check`
# for every op on the GPU.
#   run(command="bash scripts/device_check.sh", carry=[".whl", ".triton_cache"])
#
# Why parallel: on a fresh machine nearly all the time is Triton compiling (single-threaded per process) fla's
# autotune configs and GKA's kernels: run serially in session 2, the smoke finished only two mixers in 300 s.
# Each mixer, each op and each fla shape runs in its own process (20 processes; the GPU work itself is small),
# sharing one compile cache. The autotune results written here are kept and packed: their choices are noisy (20
# processes share the GPU) but they are keyed by the check's shapes (2 heads), which no timed run uses, and with
# them a fresh machine compiles one config per kernel instead of autotuning all of them again (session 3 deleted
# them, and every check spent its minutes autotuning).
set -uo pipefail
source scripts/device_prelude.sh
LIMIT=${LIMIT_S:-420}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.log"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a "$OUT/env.log"
touch /tmp/check_phase_start
# logs go straight under $OUT: a job cut by device_multi's deadline still returns what its processes wrote
# (session 5 lost a whole check that way). SMOKE / FLA_OPS / OWN_OPS (lists) and PYTEST (0/1) choose the parts (a rerun can skip what passed).
LOGS="$OUT/check_logs"; mkdir -p "$LOGS"
for m in ${SMOKE-gka gated_deltanet gla mamba2 mesanet attention}; do
  (SMOKE_DUMP_S=$((LIMIT - 15)) timeout "$LIMIT" python3 scripts/cuda_mixers_smoke.py "$m" > "$LOGS/smoke_$m.log" 2>&1; echo "exit $?" >> "$LOGS/smoke_$m.log") &
done
# the suite's GPU tests (GKA kernels vs float64 references, fla's short conv vs the PyTorch conv): pytest is in
# the device image; -p no:cacheprovider leaves nothing in the tree
[ "${PYTEST:-1}" = 1 ] && (timeout "$LIMIT" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_short_conv_fla.py tests/test_gka_triton.py \
   > "$LOGS/pytest_gpu.log" 2>&1; echo "exit $?" >> "$LOGS/pytest_gpu.log") &
# GKA's quick set (its fp32 kernels are the slowest to compile) and SDPA: one process each
for m in ${OWN_OPS-gka attention}; do
  q=""; [ "$m" = gka ] && q="--quick"
  (timeout "$LIMIT" python3 -m gkabench.cli check $q --ops "$m" --json "$LOGS/check_$m.json" > "$LOGS/check_$m.log" 2>&1; echo "exit $?" >> "$LOGS/check_$m.log") &
done
# the fla ops: one process per op and shape (D=128 and D=64 tiles, varlen), since fla autotunes every new shape
# and a process checks its cases one after the other (session 3: one process per op got through 1-4 of 6 cases
# in 400 s); the guard is lifted later only for shapes shown correct here
for m in ${FLA_OPS-gated_deltanet gla mamba2 mesanet}; do
  for shape in "T100 H2 D128" "D64" "varlen"; do
    tag=$(echo "$shape" | tr -c 'A-Za-z0-9\n' '_')
    (timeout "$LIMIT" python3 -m gkabench.cli check --ops "$m" --shapes "$shape" --lift-fla-guard --json "$LOGS/check_${m}_$tag.json" > "$LOGS/check_${m}_$tag.log" 2>&1; echo "exit $?" >> "$LOGS/check_${m}_$tag.log") &
  done
done
wait
echo "== smoke (Triton path vs reference path of each layer, float32; decode vs full; bf16 at fla's sizes)"
grep -h '^ROW' "$LOGS"/smoke_*.log | cut -c1-400
grep -h '^exit' -H "$LOGS"/smoke_*.log
echo "== gkabench check (fla guard lifted for the guarded ops; GKA --quick)"
grep -hE '^(pass|FAIL|error|refused)' "$LOGS"/check_*.log | cut -c1-200
grep -h '^exit' -H "$LOGS"/check_*.log
echo "== pytest -m gpu (GKA kernels, short conv)"
tail -4 "$LOGS/pytest_gpu.log"
# one archive of the logs and JSON (the device tool returns at most 8 files; the Triton cache parts need room)
(cd "$OUT" && tar czf device_check_logs.tgz check_logs && rm -rf check_logs)
source scripts/device_epilogue.sh
