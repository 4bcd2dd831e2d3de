#!/usr/bin/env bash
# The standard `gkabench speed` sweep on the device machine (H200), in one call of the device tool.
#
#   run(command="bash scripts/speed_device.sh 8", carry=[".whl", ".triton_cache"])   # 8 minutes of sweep, then files
#   run(command="bash scripts/speed_device.sh 8 --preset paper", carry=[".whl", ".triton_cache"])
#
# SKIP_WARM=1 skips the compile warm-up (a second call on a machine still warm).
# Arguments: MINUTES (default 8; keep it under the 10-minute call limit) then any extra `gkabench speed`
# options (they replace nothing: defaults are the standard GPU sweep, all mixers, op and layer level).
# The sweep stops between cells ~1.5 minutes before MINUTES so the files get written; it always runs with
# --resume, so the next call goes on where this one stopped:
#   - while the machine stays warm, from /tmp/gkabench_speed on it;
#   - on a fresh machine, from the JSONL the lead copied back into results/speed/ (it travels with the tree).
# Writes into $OUT: <date>-<gpu>-<tag>.{jsonl,csv,md,png} and speed-<tag>.log. fla's Hopper guard is lifted
# for timing (recorded in every row) only after `gkabench check` passes for the guarded ops; NO_GUARD=1 keeps it.
set -uo pipefail
MINUTES="${1:-8}"
shift || true
OUT="${OUT:-/tmp/gkabench_speed_out}"
WORK="${WORK:-/tmp/gkabench_speed}"  # shared by shards on several GPUs (rows are appended line by line)
mkdir -p "$OUT" "$WORK"

source scripts/device_prelude.sh  # fla wheels, PYTHONPATH, a carried Triton compile cache

# carried partial sweeps (copied back by the lead after an earlier call) seed a fresh machine
for f in results/speed/*.jsonl; do
  [ -e "$f" ] || continue
  [ -e "$WORK/$(basename "$f")" ] || cp "$f" "$WORK/"
done

python3 - <<'PY'
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import fla; print("fla", fla.__version__)
except Exception as e:
    print("fla not importable:", e)
PY

# Phase A, in parallel (Triton compiles single-threaded per process; serially, first compilations ate whole
# calls in session 2): the guard check of fla's guarded ops, one process each, and a compile-only warm-up of
# every mixer at 2k tokens (guard lifted: it only compiles; its timings are thrown away). Autotune choices made
# while these processes share the GPU are noisy, so the autotune results they wrote are deleted afterwards: the
# sweep re-benchmarks the configs without recompiling them.
touch /tmp/speed_phase_a
MIXERS=$(python3 -c "import sys; a=sys.argv[1:]; print(a[a.index('--mixers')+1] if '--mixers' in a else 'gka,gated_deltanet,gla,mamba2,mesanet,attention')" "$@")
# only the guarded ops this sweep times (a shard on another GPU checks its own)
GUARDED=$(python3 -c "print(' '.join(m for m in ('gated_deltanet', 'mamba2') if m in '$MIXERS'.split(',')))")
for op in $GUARDED; do
  [ "${NO_GUARD:-0}" = "1" ] && break
  (timeout 420 python3 -m gkabench.cli check --ops "$op" --quick --lift-fla-guard --json "$WORK/guard_check_$op.json" > "$WORK/guard_check_$op.log" 2>&1; echo $? > "$WORK/guard_check_$op.rc") &
done
# the sweep's own options minus those the warm-up sets (typer keeps the last of a repeated option)
WARM_ARGS=(); skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  case "$a" in --mixers|--lengths|--prefill-lengths|--decode-lengths|--decode-batches|--tag|--out|--rep-ms|--max-minutes) skip=1; continue;; esac
  WARM_ARGS+=("$a")
done
for m in ${MIXERS//,/ }; do
  [ "${SKIP_WARM:-0}" = "1" ] && break
  (timeout 240 python3 -m gkabench.cli speed --mixers "$m" --lengths 2k --prefill-lengths 2k --decode-lengths 2k \
     --decode-batches 1 --rep-ms 5 --out "/tmp/speed_warm_$m" --tag warm --lift-fla-guard "${WARM_ARGS[@]}" > "$WORK/warm_$m.log" 2>&1) &
done
wait
# every autotune result goes, also the carried ones: fla keys many kernels by head dim and block sizes only, so a
# choice made by `gkabench check` (20 processes on one GPU) would be reused here; the sweep re-benchmarks the
# compiled configs on its own GPU (seconds, before each new shape's timing)
find "${TRITON_CACHE_DIR}" -name '*.autotune.json' -delete
# The guard is lifted only where `gkabench check` has just shown fla's gated backward correct here, at every
# checked shape (D=128 and D=64 tiles, varlen) — the brief's rule; on any failure the sweep keeps the guard, and
# those cells then record fla's refusal.
GUARD=""
if [ "${NO_GUARD:-0}" != "1" ] && [ -n "$GUARDED" ]; then
  ok=1; for op in $GUARDED; do [ "$(cat "$WORK/guard_check_$op.rc" 2>/dev/null)" = "0" ] || ok=0; done
  if [ $ok = 1 ]; then
    GUARD="--lift-fla-guard"; echo "fla guard: check passed for $GUARDED, lifting it for timing"
  else
    echo "fla guard: check did not pass (see guard_check_*.log); keeping the guard"; for op in $GUARDED; do tail -5 "$WORK/guard_check_$op.log"; done
  fi
  for op in $GUARDED; do grep -hE '^(pass|FAIL|error|refused)' "$WORK/guard_check_$op.log" | cut -c1-160; done
fi
# what is left of MINUTES after the setup and the guard check, less ~1.5 minutes for writing the files
MAXM=$(python3 -c "print(max(0.5, float('$MINUTES') - 1.5 - $SECONDS / 60))")
TAG=$(python3 -c "import sys; a=sys.argv[1:]; print(a[a.index('--tag')+1] if '--tag' in a else (a[a.index('--preset')+1] if '--preset' in a else 'matched'))" "$@")
python3 -m gkabench.cli speed --out "$WORK" --resume --max-minutes "$MAXM" $GUARD "$@" 2>&1 | tee "$OUT/speed-$TAG.log"
rc=${PIPESTATUS[0]}

for f in "$WORK"/*-"$TAG".jsonl "$WORK"/*-"$TAG".csv "$WORK"/*-"$TAG".md "$WORK"/*-"$TAG".png; do
  [ -e "$f" ] && cp "$f" "$OUT/"
done
# the device tool returns at most 8 files: the guard checks and warm-up logs travel as one archive
(cd "$WORK" && tar czf "$OUT/speed_checks_logs.tgz" guard_check_* warm_*.log 2>/dev/null)
source scripts/device_epilogue.sh  # Triton cache parts into $OUT (carry .triton_cache next time)
ls -la "$OUT"
exit "$rc"
