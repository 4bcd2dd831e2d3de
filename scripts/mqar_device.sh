#!/usr/bin/env bash
# The MQAR sweep of issue 5 on the device machine (H200), in one call of the device tool; resumable across calls.
#
#   run(command="bash scripts/mqar_device.sh 8", carry=[".whl", ".triton_cache"])   # 8 minutes, then files
#   run(command="JOBS=2 bash scripts/mqar_device.sh 8 --mixers gka,gka_plain", ...)
#
# Arguments: MINUTES (default 8, under the 10-minute call limit) then extra `gkabench mqar` options. Runs
# `gkabench mqar` with --jobs ${JOBS:-3} worker processes on the one GPU (session 6: 8 runs sharing an H200 made
# ~26 training steps/s in all, 3 runs ~60-90: CUDA time-slices between processes, so more of them only add switching)
# and head dim 64 for every mixer: that is a head dim `gkabench check` covers, which lifting fla's Hopper guard
# requires. The guard is lifted only if the check of the guarded ops passes first, here, on this machine.
# Rows accumulate in $OUT/mqar.jsonl (seeded from the previous call's rows on a warm machine, else from
# results/mqar/mqar.jsonl, which the lead copies back after each call); no run starts after MINUTES - RUN_MIN
# (RUN_MIN, default 3: a run's expected minutes; session 6, JOBS=3: 1.3-3 min at 256 tokens; ~2x at 512, ~4x at 1024).
# Several GPUs (scripts/device_multi.sh): one copy of this script per GPU with SHARD=I/N (I from 1 to N) and the same ROWS
# folder; `gkabench mqar --shard` splits the runs and appends rows under a file lock.
set -uo pipefail
MINUTES="${1:-8}"
shift || true
OUT="${OUT:-/tmp/gkabench_mqar_out}"
ROWS="${ROWS:-$OUT}"
WORK="${WORK:-/tmp/gkabench_mqar${SHARD:+_${SHARD%%/*}}}"
mkdir -p "$OUT" "$WORK" "$ROWS"
source scripts/device_prelude.sh
# rows are appended straight into $OUT (what is there comes back even if the call overruns its limit), seeded from
# the previous call on this machine if it is still warm, else from the copy the lead committed
# (cp -n: a shard never overwrites rows another shard has started appending)
if [ -e "$WORK/mqar.jsonl" ]; then cp -n "$WORK/mqar.jsonl" "$ROWS/"; elif [ -e results/mqar/mqar.jsonl ]; then cp -n results/mqar/mqar.jsonl "$ROWS/"; fi
touch /tmp/mqar_phase_start
source scripts/mqar_guard.sh   # GUARD (fla's Hopper guard, lifted only after its check passes here), FUSED, PROFILE
MAXM=$(python3 -c "print(max(0.5, float('$MINUTES') - float('${RUN_MIN:-3}') - $SECONDS / 60))")
# runs in flight when MAXM passes may outlast the call: a hard stop 45 s before MINUTES (INT, then KILL) keeps time
# for the files; an interrupted run is simply redone by the next call
HARD=$(python3 -c "print(max(30, int(60 * float('$MINUTES') - 45 - $SECONDS)))")
timeout -k 15 -s INT "$HARD" python3 -m gkabench.cli mqar --jobs "${JOBS:-3}" --head-dim 64 --out "$ROWS" --name mqar \
  --run-dir /tmp/mqar_runs ${SHARD:+--shard "$SHARD"} --max-minutes "$MAXM" $GUARD "$@" 2>&1 | tee "$WORK/mqar.log" | grep -v "━" | tail -60
rc=${PIPESTATUS[0]}
[ -z "${SHARD:-}" ] && pkill -f "multiprocessing.spawn" 2>/dev/null  # workers orphaned by a hard stop (with shards, the orchestrator does it)
cp "$ROWS/mqar.jsonl" "$WORK/" 2>/dev/null; [ "$ROWS" != "$OUT" ] && cp "$ROWS/mqar.jsonl" "$OUT/" 2>/dev/null; [ -z "${SHARD:-}" ] && rm -f "$ROWS/mqar.jsonl.lock"
# autotune choices made by 8 processes sharing the GPU are noisy: keep the compiled kernels, drop the choices
find "$TRITON_CACHE_DIR" -name '*.autotune.json' -newer /tmp/mqar_phase_start -delete
# at most 8 files come back (mqar.jsonl/.md/.png, this archive, cache parts): logs travel as one archive
# with each run's training log (session 5: no run finished in 8 minutes and nothing said how far they got)
mkdir -p "$WORK/runs"; (cd /tmp/mqar_runs 2>/dev/null && find . -name 'log.jsonl' -exec cp --parents {} "$WORK/runs/" \; 2>/dev/null)
(cd "$WORK" && tar czf "$OUT/mqar_logs.tgz" guard_check_* mqar.log step_profile.log runs 2>/dev/null)
source scripts/device_epilogue.sh
exit "$rc"
