#!/usr/bin/env bash
# Several device scripts at once on a multi-GPU kind, each pinned to its GPU(s), in one call of the device tool:
#
#   run(kind="nvidia-h200-x4", carry=[".whl", ".triton_cache"], command="bash scripts/device_multi.sh \
#       '0:bash scripts/device_check.sh' '1:python3 scripts/gka_kernels_device.py' \
#       '2:bash scripts/speed_device.sh 8 --mixers gka,gated_deltanet,attention' \
#       '3:bash scripts/speed_device.sh 8 --mixers gla,mamba2,mesanet'")
#
# Each argument is GPUS:COMMAND (GPUS as for CUDA_VISIBLE_DEVICES, e.g. 0 or 2,3), or GPUS@N:COMMAND to give the
# job N CPU cores (the jobs without @N share the remaining cores equally; each job is pinned to its own cores). Why: the session's device time
# is counted per machine held, not per GPU, and every workload here (checks, kernel timing, a speed shard, MQAR
# runs, a small model's training) fits one GPU; on a 4-GPU machine four of them run in the time of one, and each
# times kernels on a GPU of its own.
#
# Each job gets its own OUT ($JOBS_ROOT/jobN, with command.txt and stdout.log) and its own copy of the Triton
# cache (autotune choices are made on its own GPU, not while other jobs share it). The wheels are installed once.
# At the end: POST (optional env, a command run after all jobs with every GPU visible), one archive of every
# job's files ($OUT/multi_results.tgz: the device tool returns at most 8 files), and the union of the jobs'
# compile caches packed as tcache-part-* for the next machine (autotune results from job caches, kernels from all).
# DEADLINE_S (default 540) ends jobs still running (INT, then KILL 20 s later) so the archive always gets written.
set -uo pipefail
FINAL="${OUT:-/tmp/gkabench_multi_out}"
JOBS_ROOT=/tmp/multi_jobs
rm -rf "$JOBS_ROOT"; mkdir -p "$FINAL" "$JOBS_ROOT"
source scripts/device_prelude.sh   # wheels into /tmp/site, /tmp/triton_cache seeded from .triton_cache
export GKABENCH_PRELUDE_DONE=1
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$JOBS_ROOT/env.log"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__, 'gpus', torch.cuda.device_count())" 2>&1 | tee -a "$JOBS_ROOT/env.log"
git rev-parse HEAD 2>/dev/null | tee -a "$JOBS_ROOT/env.log"
i=0; PIDS=()
# CPU cores per job: GPUS@N:COMMAND asks for N cores; the other jobs share what is left equally
# the CPUs this process may use (a container's set need not start at 0)
read -r -a ALLOWED <<< "$(python3 -c "import os; print(' '.join(map(str, sorted(os.sched_getaffinity(0)))))")"
NCPU=${#ALLOWED[@]}; asked=0; unsized=0
for job in "$@"; do
  spec=${job%%:*}
  if [[ "$spec" == *@* ]]; then asked=$((asked + ${spec#*@})); else unsized=$((unsized + 1)); fi
done
SHARE=$(( unsized > 0 ? (NCPU - asked) / unsized : 0 )); [ "$SHARE" -ge 1 ] || SHARE=1
next_core=0
signal_jobs() { for ((j = 0; j < i; j++)); do
    [ -s "$JOBS_ROOT/job$j/pgid" ] && kill "-$1" -- "-$(cat "$JOBS_ROOT/job$j/pgid")" 2>/dev/null; done; return 0; }
# the jobs run in sessions of their own, which the device tool does not end when this script is cut short: end
# them on any exit, or they would hold the GPUs into the next call on a warm machine
trap 'signal_jobs KILL' EXIT
trap 'exit 130' INT TERM
for job in "$@"; do
  spec=${job%%:*}; cmd=${job#*:}; dir="$JOBS_ROOT/job$i"; cache="/tmp/tc_job$i"
  gpus=${spec%@*}; ncores=$SHARE; [[ "$spec" == *@* ]] && ncores=${spec#*@}
  mkdir -p "$dir" "$cache"
  [ -n "$(ls -A "$cache")" ] || { cp -a "$TRITON_CACHE_DIR/." "$cache/"; python3 scripts/pack_triton_cache.py --fix-groups "$cache" > /dev/null; }
  printf 'GPUS=%s\n%s\n' "$gpus" "$cmd" > "$dir/command.txt"
  # Each job leads its own process group (setsid), so the deadline can signal exactly that job's processes. (A
  # `pkill -f PATTERN` here once matched this script's own command line, which names the jobs, and killed it.)
  # Each job also gets its own slice of the CPU cores (taskset): compiling jobs (checks, MQAR workers, parallel
  # Triton compiles) then cannot slow the launches of a job that times kernels; session 4's decode timings moved
  # by 2x between runs that shared the host with compiling jobs.
  # (cores beyond the machine's wrap around: over-asking shares cores rather than failing)
  first=$(( next_core % NCPU )); last=$(( first + ncores - 1 )); [ "$last" -lt "$NCPU" ] || last=$((NCPU - 1))
  cores=$(IFS=,; echo "${ALLOWED[*]:first:last - first + 1}"); next_core=$((next_core + ncores))
  PIN=(); if [ -n "$cores" ] && taskset -c "$cores" true 2>/dev/null; then PIN=(taskset -c "$cores"); else cores="unpinned"; fi
  echo "$cores" > "$dir/cpus.txt"
  ( export CUDA_VISIBLE_DEVICES="$gpus" OUT="$dir" TRITON_CACHE_DIR="$cache" NO_PACK=1 JOB_CMD="$cmd" PGID_FILE="$dir/pgid"
    setsid "${PIN[@]}" bash -c 'echo $$ > "$PGID_FILE"; exec bash -c "$JOB_CMD"' > "$dir/stdout.log" 2>&1
    echo "exit $?" >> "$dir/stdout.log" ) &
  PIDS+=($!); i=$((i + 1))
done
DEADLINE=${DEADLINE_S:-540}
while [ $SECONDS -lt "$DEADLINE" ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
if [ -n "$(jobs -rp)" ]; then
  echo "deadline ${DEADLINE}s: stopping jobs still running"
  signal_jobs INT; sleep 20; signal_jobs KILL; sleep 2
fi
if [ -n "${POST:-}" ]; then
  echo "== POST: $POST"; timeout 60 bash -c "$POST" > "$JOBS_ROOT/post.log" 2>&1; tail -30 "$JOBS_ROOT/post.log"
fi
for ((j = 0; j < i; j++)); do
  echo "==== job$j: $(tail -n +2 "$JOBS_ROOT/job$j/command.txt" | cut -c1-150) [GPUs $(head -1 "$JOBS_ROOT/job$j/command.txt" | cut -d= -f2)]"
  grep -v "━" "$JOBS_ROOT/job$j/stdout.log" | tail -n "${TAIL_LINES:-25}" | cut -c1-220
done
(cd "$JOBS_ROOT" && tar czf "$FINAL/multi_results.tgz" --exclude='tcache-part-*' .)
ls -la "$FINAL"
# union of the jobs' caches, then one pack (kernels compiled by any job; autotune results as the jobs left them)
mkdir -p /tmp/tc_merged
for ((j = 0; j < i; j++)); do cp -an "/tmp/tc_job$j/." /tmp/tc_merged/ 2>/dev/null; done
python3 scripts/pack_triton_cache.py --fix-groups /tmp/tc_merged > /dev/null
OUT="$FINAL" TRITON_CACHE_DIR=/tmp/tc_merged NO_PACK=0 MAX_PARTS=${MAX_PARTS:-3} source scripts/device_epilogue.sh
