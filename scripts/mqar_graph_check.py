"""Check, on this machine, that CUDA-graph training steps (gkabench.train_graph) equal eager ones for each mixer.

For every mixer, one process (in parallel: a failed capture can leave CUDA unusable in its process) trains the
exact model of a sweep run (MQAR, 2 layers, batch 256; --dim / --seq-len / --pairs) for --steps steps twice from
the same seed: eagerly, then with --cuda-graph (3 eager warm-up steps, then replays). A mixer passes when the graph
was captured and every step's loss agrees with the eager run's within --rtol (the same kernels on the same data:
only float rounding differs, e.g. atomics in fla's backward kernels). Steps per second of both are reported too (all
mixers share the GPU while this runs, so compare the two runs of one mixer, not mixers).

    python3 scripts/mqar_graph_check.py --mixers gka,attention --json out.json [--lift-fla-guard]

Prints one line per mixer, then ``GRAPH_MIXERS=a,b,...`` (the mixers that passed) for the device scripts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def check_one(mixer: str, dim: int, seq_len: int, pairs: int, steps: int, lift_guard: bool, rtol: float) -> dict:
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config
    from gkabench.train import train
    from gkabench.train_graph import graphed

    sweep = SweepConfig.defaults_for(True, mixers=[mixer], dims=[dim], lengths=[(seq_len, pairs)], lrs=[3e-3])
    sweep.lift_fla_guard = lift_guard
    base, _, _ = mqar_train_config(sweep.runs()[0], sweep)
    row: dict = {"mixer": mixer, "dim": dim, "seq_len": seq_len, "pairs": pairs, "steps": steps}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("eager", "graph"):
            cfg = base
            cfg.out_dir, cfg.steps, cfg.log_every, cfg.eval_every, cfg.early_stop_acc = f"{tmp}/{mode}", steps, 1, 0, None
            cfg.cuda_graph = mode == "graph"
            t0 = time.perf_counter()
            s = train(cfg)
            row[f"{mode}_s"] = time.perf_counter() - t0
            rows = [json.loads(line) for line in open(f"{tmp}/{mode}/log.jsonl")]
            steps_rows = [r for r in rows if "step" in r and "loss" in r and "event" not in r]
            losses[mode] = [r["loss"] for r in steps_rows]
            # steps per second after the warm-up (compilation, autotuning, the capture): from step 10 on
            late = [r for r in steps_rows if r["step"] >= 10]
            if len(late) >= 2:
                row[f"{mode}_steps_per_s"] = (late[-1]["step"] - late[0]["step"]) / (late[-1]["elapsed_s"] - late[0]["elapsed_s"])
            if mode == "graph":
                row["cuda_graph"] = s.get("cuda_graph")
    a, b = losses["eager"], losses["graph"]
    row["eager_losses"], row["graph_losses"] = a, b
    row["max_rel_diff"] = max((abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b)), default=float("nan"))
    row["pass"] = bool(graphed(row) and len(a) == len(b) == steps and row["max_rel_diff"] <= rtol)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default="gka,gka_plain,gated_deltanet,gla,mamba2,mesanet,attention")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rtol", type=float, default=1e-2, help="largest relative loss gap per step (bf16 rounding)")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--lift-fla-guard", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: check one mixer in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(check_one(args.one, args.dim, args.seq_len, args.pairs, args.steps, args.lift_fla_guard, args.rtol)))
        return
    mixers = [m for m in args.mixers.split(",") if m]
    common = ["--dim", str(args.dim), "--seq-len", str(args.seq_len), "--pairs", str(args.pairs), "--steps", str(args.steps), "--rtol", str(args.rtol)]
    procs = {
        m: subprocess.Popen([sys.executable, __file__, "--one", m, *common, *(["--lift-fla-guard"] if args.lift_fla_guard else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for m in mixers
    }
    t0, rows = time.monotonic(), []
    for m, p in procs.items():
        try:
            out, err = p.communicate(timeout=max(1.0, args.timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            rows.append({"mixer": m, "pass": False, "error": f"timed out after {args.timeout:.0f} s"})
            continue
        last = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            rows.append(json.loads(last))
        except json.JSONDecodeError:
            rows.append({"mixer": m, "pass": False, "error": (err.strip().splitlines() or ["no output"])[-1][:300]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    for r in rows:
        if "error" in r:
            print(f"FAIL {r['mixer']}: {r['error']}")
            continue
        speed = ""
        if r.get("eager_steps_per_s") and r.get("graph_steps_per_s"):
            speed = f"; steps/s eager {r['eager_steps_per_s']:.1f}, graph {r['graph_steps_per_s']:.1f} ({r['graph_steps_per_s'] / r['eager_steps_per_s']:.2f}x)"
        print(f"{'pass' if r['pass'] else 'FAIL'} {r['mixer']}: graph {r.get('cuda_graph')}; max loss gap {r['max_rel_diff']:.2e} over {r['steps']} steps{speed}")
    print("GRAPH_MIXERS=" + ",".join(r["mixer"] for r in rows if r.get("pass")))


if __name__ == "__main__":
    main()
