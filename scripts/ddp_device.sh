#!/usr/bin/env bash
# Issue 5's multi-GPU check on the 2-GPU device kind: the same `gkabench train` command under torchrun (2 processes,
# NCCL, DDP) and in one process, same global batch and seed; their per-step losses must agree.
#
#   run(command="bash scripts/ddp_device.sh", kind="nvidia-h200-x2", carry=[".whl", ".triton_cache"])
#
# Mixer attention + GKA (a hybrid: the GKA Triton kernels and SDPA both under DDP), MQAR data, bf16 autocast.
# Exact equality is not expected: each rank reduces half the batch and NCCL averages the gradients, so bf16
# rounding differs; the script prints both curves and the largest relative difference of the loss.
set -uo pipefail
OUT="${OUT:-/tmp/gkabench_ddp_out}"; mkdir -p "$OUT"
source scripts/device_prelude.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$OUT/env.log"
ARGS=(--mixer gka,attention --data mqar --seq-len 256 --mqar-pairs 32 --hidden 256 --layers 2 --head-dim 128
      --steps ${STEPS:-60} --batch-size 32 --lr 3e-3 --warmup 10 --eval-every ${STEPS:-60} --log-every 1 --save-every 0 --seed 0 --no-resume)
timeout 280 torchrun --standalone --nproc_per_node 2 -m gkabench.cli train --out /tmp/ddp2 "${ARGS[@]}" > "$OUT/ddp2.log" 2>&1
echo "torchrun exit $?"
timeout 200 python3 -m gkabench.cli train --out /tmp/ddp1 "${ARGS[@]}" > "$OUT/ddp1.log" 2>&1
echo "single exit $?"
cp /tmp/ddp2/log.jsonl "$OUT/ddp2_log.jsonl" 2>/dev/null; cp /tmp/ddp1/log.jsonl "$OUT/ddp1_log.jsonl" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def losses(p):
    try:
        rows = [json.loads(l) for l in open(p) if l.strip()]
    except FileNotFoundError:
        return {}, {}
    start = next((r for r in rows if r.get("event") == "start"), {})
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r and "event" not in r}, start
two, s2 = losses(f"{out}/ddp2_log.jsonl")
one, s1 = losses(f"{out}/ddp1_log.jsonl")
print("world sizes:", s2.get("world_size"), "vs", s1.get("world_size"), "| fla guard lifted:", s2.get("fla_guard_lifted"))
common = sorted(set(two) & set(one))
for s in common[:: max(1, len(common) // 12)]:
    print(f"step {s:4d}  2 GPUs {two[s]:.4f}  1 GPU {one[s]:.4f}")
if common:
    worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in common)
    print(f"{len(common)} steps compared; largest relative loss difference {worst:.2e}")
else:
    print("no common steps: see ddp2.log / ddp1.log")
PY
source scripts/device_epilogue.sh
