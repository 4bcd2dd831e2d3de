"""Where one MQAR training step's time goes on a GPU, per mixer: is the sweep launch-bound or GPU-bound?

For each mixer, the exact model and batch of a sweep run (``mqar_train_config``), then:

- ``eager_ms``: wall time per step of the plain loop (forward, backward, clip, AdamW), GPU synchronised at the end;
- ``cuda_ms`` / ``kernels``: summed GPU kernel time and kernel count per step (torch.profiler); ``top_kernels_ms``
  the costliest kernels, ``top_ops_ms`` the aten ops whose own kernels cost most (``fused_top_*``: with compiled ops);
- ``fused_ms`` / ``fused_cuda_ms``: the same with norms and gates compiled (``FUSED_ELEMENTWISE``); ``fused_err``:
  largest relative gap between its losses and the eager loop's over the same five steps from the same weights.

Session 7 (H200, 512 tokens, d = 128, batch 256): eager wall time equals kernel time within 5% for every mixer
(GPU-bound, not launch-bound), and a CUDA graph of the whole step gave no gain (removed from this script since).

    python3 scripts/mqar_step_profile.py --mixers gka,attention --dim 128 --seq-len 512 --pairs 128 --json out.json

Each mixer runs in its own process (a failed capture can leave CUDA unusable), one after another (timings alone).
``--procs N`` then times N processes training the first mixer at once, eager and fused (aggregate steps/s): one
process was host-bound with the compiled ops (session 7), but runs share the GPU in the sweep.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time


# Five AdamW steps at lr 1e-3 from the same weights, bf16 autocast: eager and compiled ops round differently
# (fusion keeps float32 intermediates that eager rounds to bf16 between kernels), so the losses drift apart by
# bf16's relative precision (2^-8 = 4e-3) at most; a wrong fused kernel gives O(1) gaps.
FUSED_LOSS_TOL = 4e-3


def setup(mixer: str, dim: int, seq_len: int, pairs: int, batch: int, steps: int, lift_guard: bool, device: str = "cuda"):
    """The exact model and batches of a sweep run on ``device`` (CUDA; CPU only to test this script): (model,
    batches, make_opt, step, fused module, row)."""
    import torch

    from gkabench.models.modeling import loss_positions_of
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config
    from gkabench.train import build_model, build_source, param_groups

    sweep = SweepConfig.defaults_for(True, mixers=[mixer], dims=[dim], lengths=[(seq_len, pairs)], lrs=[3e-3], batch_size=batch, head_dim=64)
    sweep.lift_fla_guard = lift_guard
    cfg, _, _ = mqar_train_config(sweep.runs()[0], sweep)
    if lift_guard:
        from gkabench.layers.fla_guard import lift_fla_hopper_guard

        lift_fla_hopper_guard()
    from gkabench.layers import fused

    fused.FUSED_ELEMENTWISE = "off"  # the plain eager step first
    dev = torch.device(device)
    torch.manual_seed(0)
    source = build_source(cfg, None)
    model = build_model(cfg, source.vocab_size, None).to(dev).train()
    batches = []
    for s in range(steps + 8):
        b = source.micro_batch(s, 0, 1, cfg.batch_size)
        pos = loss_positions_of(b["labels"])
        batches.append({"input_ids": b["input_ids"].to(dev), "labels": b["labels"].to(dev), "loss_positions": pos.to(dev)})
    # every batch scores the same number of answers (its first n): fixed shapes, one compile per shape
    n = min(len(b["loss_positions"]) for b in batches)
    for b in batches:
        b["loss_positions"] = b["loss_positions"][:n].contiguous()

    def make_opt():
        return torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)

    def step(opt, b):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(**b, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    row = {"mixer": mixer, "dim": dim, "seq_len": seq_len, "pairs": pairs, "batch": batch}
    return model, batches, make_opt, step, fused, row


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_one(mixer: str, dim: int, seq_len: int, pairs: int, batch: int, steps: int, lift_guard: bool, device: str = "cuda") -> dict:
    model, batches, make_opt, step, fused, row = setup(mixer, dim, seq_len, pairs, batch, steps, lift_guard, device)
    init = copy.deepcopy(model.state_dict())
    from torch.profiler import ProfilerActivity, profile

    def measure(opt) -> dict:
        """Wall ms per step (after 3 warm-up steps: compiles, autotunes), then kernel ms, kernel count and the
        costliest kernels per step (torch.profiler over 3 steps)."""
        for b in batches[:3]:
            step(opt, b)
        sync(device)
        t0 = time.perf_counter()
        for b in batches[3 : 3 + steps]:
            step(opt, b)
        sync(device)
        wall = 1e3 * (time.perf_counter() - t0) / steps
        if not device.startswith("cuda"):  # kernel times are CUDA's
            return {"ms": wall, "cuda_ms": None, "kernels": None, "top_kernels_ms": {}, "top_ops_ms": {}}
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for b in batches[:3]:
                step(opt, b)
            sync(device)
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        top: dict[str, float] = {}
        for e in kernels:
            top[e.name[:60]] = top.get(e.name[:60], 0.0) + e.device_time / 1e3 / 3
        # kernel names of PyTorch's elementwise ops are cut before the functor; the aten op that launched them says
        # which op it was (self time: an op's own kernels, not its children's)
        ops = {a.key: getattr(a, "self_device_time_total", 0) / 1e3 / 3 for a in prof.key_averages()}
        ops = {k: v for k, v in ops.items() if v > 0}
        return {"ms": wall, "cuda_ms": sum(e.device_time for e in kernels) / 1e3 / 3, "kernels": len(kernels) // 3,
                "top_kernels_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:8]),
                "top_ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])}  # fmt: skip

    eager = measure(make_opt())
    row.update(eager_ms=eager["ms"], cuda_ms=eager["cuda_ms"], kernels=eager["kernels"], top_kernels_ms=eager["top_kernels_ms"],
               top_ops_ms=eager.get("top_ops_ms", {}))

    # the same steps with norms and gates compiled (gkabench.layers.fused.FUSED_ELEMENTWISE), from the same weights
    # as an eager reference run: the losses must agree to float32/bf16 rounding
    n_cmp = 5
    losses = {}
    for mode in ("off", "auto"):
        fused.FUSED_ELEMENTWISE = mode
        model.load_state_dict(init)
        opt = make_opt()
        losses[mode] = [step(opt, b).item() for b in batches[:n_cmp]]
    row["eager_losses"], row["fused_losses"] = losses["off"], losses["auto"]
    row["fused_err"] = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses["auto"], losses["off"]))
    row["elementwise"] = fused.fused_impl()
    compiled = measure(opt)
    row.update(fused_ms=compiled["ms"], fused_cuda_ms=compiled["cuda_ms"], fused_kernels=compiled["kernels"],
               fused_top_kernels_ms=compiled["top_kernels_ms"], fused_top_ops_ms=compiled.get("top_ops_ms", {}))  # what is left
    return row


def _throughput_child(spec: dict, mode: str, barrier, results) -> None:
    """One of ``--procs`` processes: warm up (compiles, autotunes) alone, then time ``steps`` steps in step with the
    others (a barrier), as runs of the sweep share a GPU."""
    _, batches, make_opt, step, fused, _ = setup(**spec)
    fused.FUSED_ELEMENTWISE = mode
    opt = make_opt()
    for b in batches[:3]:
        step(opt, b)
    sync(spec["device"])
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(spec["steps"]):
        step(opt, batches[3 + i % (len(batches) - 3)])
    sync(spec["device"])
    results.put((mode, time.perf_counter() - t0, fused.fused_impl()))


def concurrent_throughput(spec: dict, procs: int, timeout: float) -> dict:
    """Steps per second of ``procs`` processes training the same model at once on one GPU, eager and then with
    norms and gates compiled: the number that decides whether ``FUSED=1`` pays when runs share the GPU."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    out = {"procs": procs, "steps": spec["steps"]}
    for mode in ("off", "auto"):
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        workers = [ctx.Process(target=_throughput_child, args=(spec, mode, barrier, results)) for _ in range(procs)]
        for w in workers:
            w.start()
        times, impls = [], set()
        try:
            for _ in workers:
                _, t, impl = results.get(timeout=timeout)
                times.append(t)
                impls.add(impl)
        except queue.Empty:
            out[mode] = {"error": f"timeout {timeout:g}s"}
        else:
            out[mode] = {"steps_per_s": procs * spec["steps"] / max(times), "slowest_s": max(times), "impl": sorted(impls)}
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    if "steps_per_s" in out["off"] and "steps_per_s" in out["auto"]:
        out["fused_speedup"] = out["auto"]["steps_per_s"] / out["off"]["steps_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixers", default="gka,gka_plain,gated_deltanet,gla,mamba2,mesanet,attention")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lift-fla-guard", action="store_true")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", default=None)
    ap.add_argument("--ops-only", action="store_true", help="only check the compiled norms / gates against float64")
    ap.add_argument("--procs", type=int, default=0, help="also time N processes training at once, eager vs fused (first mixer)")
    ap.add_argument("--device", default="cuda", help="cuda (cpu only tests this script)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(profile_one(a.mixers, a.dim, a.seq_len, a.pairs, a.batch, a.steps, a.lift_fla_guard, a.device)))
        return
    from gkabench.layers.fused import check_fused_ops

    ops = check_fused_ops(a.device)
    ops_ok = ops["pass"]
    print("fused ops vs float64:", json.dumps(ops), "pass" if ops_ok else "FAIL", flush=True)
    if a.ops_only:
        print("FUSED_OK" if ops_ok else "FUSED_NOT_OK")
        return
    rows = []
    for m in a.mixers.split(","):
        cmd = [sys.executable, __file__, "--one", "--mixers", m, "--dim", str(a.dim), "--seq-len", str(a.seq_len),
               "--pairs", str(a.pairs), "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device] + (["--lift-fla-guard"] if a.lift_fla_guard else [])  # fmt: skip
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            got = [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")]
            rows.append(got[0] if got else {"mixer": m, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]})
        except subprocess.TimeoutExpired:
            rows.append({"mixer": m, "error": f"timeout {a.timeout:g}s"})
        print(json.dumps(rows[-1]), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"fused_ops": ops, "rows": rows}, f, indent=1)
    print(f"\n{'mixer':16s} {'eager ms':>9s} {'cuda ms':>8s} {'kernels':>8s} {'fused ms':>9s} {'fused cuda':>10s} {'kernels':>8s} {'loss gap':>9s}")
    for r in rows:
        cells = [format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-".rjust(len(format(0, fmt)))
                 for k, fmt in (("eager_ms", "9.2f"), ("cuda_ms", "8.2f"), ("kernels", "8d"), ("fused_ms", "9.2f"),
                                ("fused_cuda_ms", "10.2f"), ("fused_kernels", "8d"), ("fused_err", "9.1e"))]  # fmt: skip
        print(f"{r['mixer']:16s} {' '.join(cells)} {r.get('error') or ''}")
    gaps = [r["fused_err"] for r in rows if "fused_err" in r]
    agreed = ops_ok and gaps and len(gaps) == len(rows) and max(gaps) < FUSED_LOSS_TOL
    shared = None
    if a.procs > 1:
        spec = {"mixer": a.mixers.split(",")[0], "dim": a.dim, "seq_len": a.seq_len, "pairs": a.pairs, "batch": a.batch,
                "steps": a.steps, "lift_guard": a.lift_fla_guard, "device": a.device}  # fmt: skip
        shared = concurrent_throughput(spec, a.procs, a.timeout)
        print(f"\n{a.procs} processes at once ({spec['mixer']}): " + json.dumps(shared))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"fused_ops": ops, "rows": rows, "concurrent": shared}, f, indent=1)
    # verdict for the caller (mqar_guard.sh): compiled norms and gates are used only if every mixer agreed, and,
    # where --procs measured runs sharing the GPU, only if that made more steps per second (5% margin)
    faster = shared is None or shared.get("fused_speedup", 0) > 1.05
    print("FUSED_OK" if agreed and faster else "FUSED_NOT_OK")


if __name__ == "__main__":
    main()
