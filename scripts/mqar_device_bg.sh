#!/usr/bin/env bash
# The MQAR sweep left running in the background of one device machine, across back-to-back calls of the device tool.
#
#   run(command="JOBS=2 bash scripts/mqar_device_bg.sh start 9.5 --lengths 512:128 --lrs 3e-3,1e-2",
#       carry=[".whl", ".triton_cache"], timeout_s=600)
#   run(command="bash scripts/mqar_device_bg.sh collect 9.6", timeout_s=600)   # at once: the machine stays warm 30 s
#   run(command="bash scripts/mqar_device_bg.sh final 9.7", timeout_s=600)   # the session's last
#
# Why (session 7): a training step of these models is GPU-bound, so a GPU finishes ~one 512-token run per ~65 s
# whatever runs at once, and each call of scripts/mqar_device.sh lost time that no run used: the machine's start
# (~50 s), fla's guard check (~60 s), the last minutes in which no run may start, and the runs cut by the hard stop.
# Here the sweep is started once, in a process session of its own (`setsid`: the device tool ends what a command
# leaves running except such sessions, which live until the machine goes back), and every call only waits and
# brings back what is done. The next call must come within the machine's 30 s of warmth, or the sweep dies with it
# (its finished rows came back with the call before; an unfinished run is redone by the next sweep).
#
# Verbs (MINUTES: how long this call lasts, under the device tool's 10-minute limit):
#   start MINUTES [gkabench mqar options] [--then options ...]
#                                          wheels, Triton cache, guard check (mqar_guard.sh), launch, then collect
#   collect MINUTES [options]              wait MINUTES (or until the sweep ends), bring back rows and logs; with the
#                                          start options, a machine with no sweep running (the last one went back
#                                          between calls) starts one first, so every call may pass the same options
#   final MINUTES                          the same, but first writes the call's end into the deadline file: from
#                                          then on a run starts only if the finished rows of this GPU model say it
#                                          ends in time (gkabench mqar --deadline-file); at the end whatever still
#                                          runs is stopped and Triton's cache packed. STOP_AT (minutes into the
#                                          call) also touches the stop file then: no new run starts at all
#   SESSION_MIN=M (start / collect)        the session's last run must end M minutes after this call starts (its
#                                          deadline file): runs that would outlive the session are not started
# On a machine of several GPUs, one sweep per GPU (GPUS=N to choose), each `--shard i/N` with JOBS runs at once.
# GRAPH=1 (start): the mixers scripts/mqar_graph_check.py finds exact here train with replayed CUDA graphs (mqar_guard.sh).
# WORK (default /tmp/gkabench_mqar_bg) holds the rows, logs and the sweeps' ids between calls.
# Every call returns $OUT/mqar.jsonl (all rows so far, seeded from results/mqar/mqar.jsonl; a sweep given its own
# `--name X` after the others' options writes X.jsonl, returned too), mqar_logs.tgz (the
# sweep's log, guard check, each run's training log) and, after `final`, tcache-part-*.
set -uo pipefail
VERB="${1:?start, collect or final}"; MINUTES="${2:?minutes this call may last}"; shift 2
OUT="${OUT:-/tmp/gkabench_mqar_out}"
WORK="${WORK:-/tmp/gkabench_mqar_bg}"
ROWS="$WORK/rows"; STOP="$WORK/stop"; DEADLINE="$WORK/deadline"; PIDFILE="$WORK/sweep.pids"
mkdir -p "$OUT" "$WORK" "$ROWS"
# one line per sweep (one per GPU), each the id of the process session it leads
alive() { local pid; [ -s "$PIDFILE" ] || return 1; while read -r pid; do kill -0 "$pid" 2>/dev/null && return 0; done < "$PIDFILE"; return 1; }
signal_sweeps() { local pid; while read -r pid; do kill "-$1" -- "-$pid" 2>/dev/null; done < "$PIDFILE"; return 0; }
case "$VERB" in start|collect|final) ;; *) echo "unknown verb $VERB: start, collect or final"; exit 2 ;; esac
LAUNCH=0
if [ "$VERB" = start ]; then
  if alive; then echo "a sweep is already running on this machine: use collect or final"; exit 1; fi
  LAUNCH=1
elif ! alive && [ $# -gt 0 ]; then
  # a fresh machine (the last one went back between calls) or a sweep that ended: start again with the options
  # given, which resumes whatever has no row yet
  echo "no sweep running on this machine: starting one with the options given"; LAUNCH=1
elif [ ! -s "$PIDFILE" ]; then
  echo "no sweep was started on this machine (a fresh one?): pass the start options to collect / final to start one"; exit 1
fi
if [ "$LAUNCH" = 1 ]; then
    source scripts/device_prelude.sh
    [ -e results/mqar/mqar.jsonl ] && cp -n results/mqar/mqar.jsonl "$ROWS/"
    touch "$WORK/phase_start"
    source scripts/mqar_guard.sh   # GUARD: fla's Hopper guard lifted only after its check passes here
    rm -f "$STOP" "$DEADLINE" "$PIDFILE"
    # GPUS sweeps (default: one per visible GPU), sweep i on GPU i with `--shard i+1/GPUS` and its own slice of the
    # CPU cores; all append to the same rows file under its lock
    NGPU="${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}"; [ "${NGPU:-0}" -ge 1 ] || NGPU=1
    read -r -a ALLOWED <<< "$(python3 -c "import os; print(' '.join(map(str, sorted(os.sched_getaffinity(0)))))")"
    per=$(( ${#ALLOWED[@]} / NGPU )); [ "$per" -ge 1 ] || per=1
    # `--then` splits the options into sweeps run one after another (a grid is a product: e.g. lrs 3e-3,1e-2 at every
    # dim, then lr 1e-3 at the larger dims only), each after the one before ends, none once the stop file exists
    SWEEPS=(); part=""
    for a in "$@"; do if [ "$a" = "--then" ]; then SWEEPS+=("$part"); part=""; else part+=" $(printf '%q' "$a")"; fi; done
    SWEEPS+=("$part")
    for ((g = 0; g < NGPU; g++)); do
      SHARD=""; [ "$NGPU" -gt 1 ] && SHARD="--shard $((g + 1))/$NGPU"
      first=$(( (g * per) % ${#ALLOWED[@]} )); cores=$(IFS=,; echo "${ALLOWED[*]:first:per}")
      PIN=(); taskset -c "$cores" true 2>/dev/null && PIN=(taskset -c "$cores")
      runner="$WORK/sweeps_gpu$g.sh"; : > "$runner"
      for sweep in "${SWEEPS[@]}"; do
        printf '[ -e %q ] || python3 -m gkabench.cli mqar --jobs %q --head-dim 64 --out %q --name mqar --run-dir %q --stop-file %q --deadline-file %q %s %s %s %s\n' \
          "$STOP" "${JOBS:-2}" "$ROWS" "$WORK/runs" "$STOP" "$DEADLINE" "$SHARD" "$GUARD" "$GRAPHS" "$sweep" >> "$runner"
      done
      # setsid execs in place (this shell's background child leads no group), so $! is the session's id
      CUDA_VISIBLE_DEVICES="$g" setsid "${PIN[@]}" bash "$runner" > "$WORK/mqar_gpu$g.log" 2>&1 < /dev/null &
      echo $! >> "$PIDFILE"
    done
    echo "$NGPU sweep(s) started, each running in turn:"; cat "$WORK/sweeps_gpu0.sh"
else
    export GKABENCH_PRELUDE_DONE=1; source scripts/device_prelude.sh   # environment only: the running sweep's wheels stay
fi
# this call ends at MINUTES less time for the files (END). `final` sets the sweep's deadline to END: each run
# starts only if its estimate (the longest comparable finished run) fits. Session 8 touched a stop file at a fixed
# time instead and lost the 2 runs in flight (too late for them); session 9 did so 3 minutes before the end and
# left the GPU idle for the last 3.5 minutes (too early for 256-token runs of ~75 s).
read -r END STOP_S <<< "$(python3 -c "end = int(60 * float('$MINUTES')) - (50 if '$VERB' == 'final' else 20); print(end, int(60 * float('${STOP_AT:-0}')) if '${STOP_AT:-}' else 10**9)")"
# set_deadline S: from now on a run starts only if expected to end within S seconds (written atomically)
set_deadline() { python3 -c "import time; print(time.time() + $1)" > "$DEADLINE.tmp" && mv "$DEADLINE.tmp" "$DEADLINE"; }
if [ "$VERB" = final ]; then
  set_deadline $(( END - SECONDS - 5 ))
  echo "deadline set: runs start only if expected to end within $(( END - SECONDS - 5 )) s"
elif [ -n "${SESSION_MIN:-}" ]; then
  # The session's end, known before its last call: a run started late in `collect` may need more than what is left
  # of the whole session (a 1024-token run: up to ~12 minutes) and be cut by `final` with its work lost. With the
  # deadline at the session's end, such runs are passed over for shorter ones; `final` then sets its own.
  SESSION_S=$(( $(python3 -c "print(int(60 * float('$SESSION_MIN')))") - SECONDS ))
  set_deadline "$SESSION_S"
  echo "session deadline set: runs start only if expected to end within ${SESSION_S} s"
fi
while alive && [ "$SECONDS" -lt "$END" ]; do
  if [ "$VERB" = final ] && [ "$SECONDS" -ge "$STOP_S" ] && [ ! -e "$STOP" ]; then touch "$STOP"; echo "stop file touched at ${SECONDS} s: no new run starts"; fi
  sleep 5
done
# the runs started on this machine that did not finish (a finished run's log ends with its "end" event); only
# `final` stops a sweep, so after its signals these are exactly the runs it cut
unfinished() { local f; for f in "$WORK"/runs/*/*/log.jsonl; do
  [ -e "$f" ] && ! grep -q '"event": "end"' "$f" && basename "$(dirname "$f")"; done | paste -sd ' ' -; }
if [ "$VERB" = final ] && alive; then
  signal_sweeps INT; sleep 10; signal_sweeps KILL
  for _ in 1 2 3 4 5; do alive && sleep 1; done
  CUT="$(unfinished)"
  if [ -n "$CUT" ]; then echo "sweep stopped at ${SECONDS} s; runs cut in flight (the next sweep redoes them): $CUT"
  else echo "sweep stopped at ${SECONDS} s; no run was in flight (the sweeps left were passing over runs that do not fit)"; fi
fi
alive && echo "sweep still running after ${SECONDS} s: call collect or final within 30 s" || echo "sweep not running"
cp "$ROWS"/*.jsonl "$OUT/" 2>/dev/null   # mqar.jsonl and any side sweep run with its own --name
cat "$WORK"/mqar_gpu*.log | grep -v "━" | grep -E "acc |FAILED" | tail -40
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
# the sweeps' and checks' logs and each run's training log (runs/mqar/<run>/log.jsonl), not its other files
(cd "$WORK" && { ls guard_check_* mqar_gpu*.log step_profile.log graph_check.log 2>/dev/null; find runs -name log.jsonl 2>/dev/null; } | tar czf "$OUT/mqar_logs.tgz" -T -)
if [ "$VERB" = final ]; then
  # autotune choices made by runs sharing the GPU are noisy: keep the compiled kernels, drop the choices
  find "$TRITON_CACHE_DIR" -name '*.autotune.json' -newer "$WORK/phase_start" -delete
  source scripts/device_epilogue.sh
fi
exit 0
