# Sourced by the MQAR device scripts after device_prelude.sh, with WORK and OUT set. Sets GUARD to
# "--lift-fla-guard" only if `gkabench check` of fla's guarded gated ops (Gated DeltaNet, Mamba2 through simple GLA)
# passes at head dim 64 (the shapes MQAR runs use) on this machine; NO_GUARD=1 skips the check and keeps the guard.
# A machine kept warm between calls checks once: the verdict stays in $WORK/guard_check_*.rc.
# FUSED=1: norms and gates run compiled (gkabench.layers.fused; off by default), and only once this machine has
# shown them equal to float64 (with PROFILE also whole training steps equal to eager ones for every profiled mixer).
# FUSED=measure: only if also faster with JOBS runs sharing the GPU (mqar_step_profile.py --procs), measured here.
# PROFILE="--dim 128 --seq-len 512 --pairs 128 --mixers gka,attention": where a training step's time goes, eager vs fused
# GRAPH=1: scripts/mqar_graph_check.py trains every mixer 40 steps eager and as replayed CUDA graphs (~2-4 minutes, all
# mixers at once; GRAPH_CHECK adds options, e.g. "--mixers gka --dim 64"); GRAPHS="--cuda-graph <the mixers whose
# losses agreed>" for the sweep (empty: all eager). A machine kept warm checks once ($WORK/graph_check.log).
GUARD=""
if [ "${FUSED:-0}" = "1" ] && [ -z "${PROFILE:-}" ]; then
  # the compiled ops' float64 check needs no guard: it runs alongside the guard checks (the `wait` below ends both)
  (timeout 180 python3 scripts/mqar_step_profile.py --ops-only > "$WORK/step_profile.log" 2>&1) &
fi
if [ "${NO_GUARD:-0}" != "1" ]; then
  ok=1
  for op in gated_deltanet mamba2; do
    if [ "$(cat "$WORK/guard_check_$op.rc" 2>/dev/null)" != "0" ]; then
      (timeout 360 python3 -m gkabench.cli check --ops "$op" --shapes D64 --lift-fla-guard --json "$WORK/guard_check_$op.json" > "$WORK/guard_check_$op.log" 2>&1; echo $? > "$WORK/guard_check_$op.rc") &
    fi
  done
  wait
  for op in gated_deltanet mamba2; do [ "$(cat "$WORK/guard_check_$op.rc")" = "0" ] || ok=0; done
  grep -hE '^(pass|FAIL|error|refused)' "$WORK"/guard_check_*.log | cut -c1-160
  if [ $ok = 1 ]; then GUARD="--lift-fla-guard"; echo "fla guard: check passed at head dim 64 (the shapes these runs use), lifted for training"
  else echo "fla guard: check did not pass; kept (gated_deltanet / mamba2 runs will fail with fla's message)"; fi
fi
wait
echo "checks: guard and compiled ops done at ${SECONDS} s into this call"
if [ "${FUSED:-0}" = "measure" ]; then
  # decide by measurement: whole GKA training steps (512/128, d = 128) eager vs fused must agree, and JOBS processes
  # training at once must make more steps per second fused than eager (5% margin); ~2-3 minutes
  timeout 420 python3 scripts/mqar_step_profile.py --mixers gka --dim 128 --seq-len 512 --pairs 128 --steps 30 \
    --procs "${JOBS:-2}" --timeout 200 --json "$OUT/step_profile.json" ${GUARD:+--lift-fla-guard} > "$WORK/step_profile.log" 2>&1
elif [ -n "${PROFILE:-}" ]; then
  timeout 400 python3 scripts/mqar_step_profile.py $PROFILE --json "$OUT/step_profile.json" ${GUARD:+--lift-fla-guard} > "$WORK/step_profile.log" 2>&1
fi
[ -e "$WORK/step_profile.log" ] && tail -12 "$WORK/step_profile.log"
if [ "${FUSED:-0}" != "0" ] && grep -q '^FUSED_OK' "$WORK/step_profile.log"; then export GKABENCH_FUSED_ELEMENTWISE=auto; echo "fused norms/gates: checked here, used"
else export GKABENCH_FUSED_ELEMENTWISE=off; fi
GRAPHS=""
if [ "${GRAPH:-0}" = "1" ]; then
  if [ ! -s "$WORK/graph_check.log" ]; then
    timeout 330 python3 scripts/mqar_graph_check.py --timeout 300 --json "$OUT/graph_check.json" ${GUARD:+--lift-fla-guard} ${GRAPH_CHECK:-} > "$WORK/graph_check.log" 2>&1
  fi
  grep -E '^(pass|FAIL)' "$WORK/graph_check.log" | cut -c1-220
  echo "graph check done at ${SECONDS} s into this call"
  gm="$(grep '^GRAPH_MIXERS=' "$WORK/graph_check.log" | tail -1 | cut -d= -f2)"
  if [ -n "$gm" ]; then GRAPHS="--cuda-graph $gm"; echo "cuda graphs: checked here, used for $gm"
  else echo "cuda graphs: no mixer passed the check here; all runs eager"; fi
fi
