"""GPU check and benchmark of the GKA Triton kernels (chunk forward/backward, decode), one call of the device tool.

1. Accuracy: every kernel vs ``gka_exact`` in float64 on the GPU, fresh random data per case (q, k L2-normalised,
   g = logsigmoid(N(0,1) + 4), alpha ~ U(0,1)), forward and gradients, several shapes (T not a multiple of 64,
   varlen, initial/final states), fp32 and bf16; decode vs exact and vs the chunked path.
2. Speed: bf16, H=16, D=128, 32768 tokens per call (B = 32768 / T), T in {2048, 8192, 32768}, num_iter=30;
   fwd and fwd+bwd Mtok/s (triton.testing.do_bench median), peak memory, TFLOP/s vs the spec-section-3 count;
   per-launch times at T=8192 for both kernel variants of the bf16 path ("prep", the default, and "fused": keys
   with "@fused"); decode step latency at batch 1 and 64; fla chunk_gated_delta_rule side by side
   when fla is importable (its Hopper guard for triton < 3.7.1 lifted for the timing only).

Run from the repo root:  PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:. python3 scripts/gka_kernels_device.py
Writes ``$OUT/gka_kernels.json`` and ``$OUT/gka_kernels.log``; prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

OUT = os.environ.get("OUT", "/tmp/gka_out")
os.makedirs(OUT, exist_ok=True)
LOG = open(os.path.join(OUT, "gka_kernels.log"), "w")


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make(B, T, H, D, DV, dtype, gen, dev="cuda"):
    q = F.normalize(torch.randn(B, T, H, D, generator=gen, device=dev), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, generator=gen, device=dev), dim=-1).to(dtype)
    v = torch.randn(B, T, H, DV, generator=gen, device=dev).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, device=dev) + 4)
    a = torch.rand(B, T, H, generator=gen, device=dev)
    return q, k, v, g, a


def rand_state(N, H, D, DV, gen, dev="cuda"):
    h = torch.randn(N, H, D, D, generator=gen, device=dev)
    h = h @ h.transpose(-1, -2) / D  # symmetric PSD like every state the op builds
    u = torch.randn(N, H, D, DV, generator=gen, device=dev)
    return h, u


def check_case(name, B, T, H, D, DV, dtype, num_iter, gen, cu=None, state=False, grads=True, alpha_one=False,
               variant=None, seed=None):  # fmt: skip
    """``variant``: the chunk_gka kernel layout (default: its default); ``seed``: fresh inputs from this seed (so two
    variants see the same data) instead of the shared generator."""
    from gkabench.kernels.gka import gka_exact
    from gkabench.kernels.gka.chunk import chunk_gka

    if seed is not None:
        gen = torch.Generator(device="cuda").manual_seed(seed)

    ins = list(make(B, T, H, D, DV, dtype, gen))
    if alpha_one:  # pure ridge readout: the solve's error reaches o undamped
        ins[4] = torch.ones_like(ins[4])
    N = B if cu is None else len(cu) - 1
    cu_t = None if cu is None else torch.tensor(cu, device="cuda", dtype=torch.int32)
    h0 = list(rand_state(N, H, D, DV, gen)) if state else []
    leaves = [x.clone().requires_grad_(grads) for x in ins + h0]
    t0 = time.time()
    o, st = chunk_gka(*leaves[:5], num_iter=num_iter, initial_state=tuple(leaves[5:]) if state else None,
                      output_final_state=True, cu_seqlens=cu_t, **({"variant": variant} if variant else {}))  # fmt: skip
    res = {"case": name, "B": B, "T": T, "H": H, "D": D, "Dv": DV, "dtype": str(dtype).replace("torch.", ""),
           "num_iter": num_iter, "cu_seqlens": cu, "state": state}  # fmt: skip
    do = torch.randn(o.shape, generator=gen, device="cuda").to(o.dtype)
    ds = [torch.randn(s.shape, generator=gen, device="cuda") for s in st]
    if grads:
        loss = (o.float() * do.float()).sum() + sum((s * d).sum() for s, d in zip(st, ds))
        gr = torch.autograd.grad(loss, leaves)
    torch.cuda.synchronize()
    res["t_triton_s"] = time.time() - t0
    ex = [x.detach().double().requires_grad_(grads) for x in leaves]
    oe, ste = gka_exact(*ex[:5], initial_state=tuple(ex[5:]) if state else None, output_final_state=True,
                        cu_seqlens=cu_t)  # fmt: skip
    res["o"] = rel(o, oe)
    res["h_kk"] = rel(st[0], ste[0])
    res["h_kv"] = rel(st[1], ste[1])
    if grads:
        loss = (oe * do.double()).sum() + sum((s * d.double()).sum() for s, d in zip(ste, ds))
        gre = torch.autograd.grad(loss, ex)
        for nm, a, b in zip(["dq", "dk", "dv", "dg", "dalpha", "dh0_kk", "dh0_kv"], gr, gre):
            res[nm] = rel(a, b)
    return res


def decode_case(name, B, T0, T1, H, D, DV, dtype, num_iter, gen, with_chunk=True):
    """State after T0 tokens (exact, float64 -> float32), then T1 decode calls of one token and one call of T1
    tokens; compare with gka_exact over all T0 + T1 tokens and (with_chunk) with the chunked path."""
    from gkabench.kernels.gka import gka_exact
    from gkabench.kernels.gka.chunk import chunk_gka
    from gkabench.kernels.gka.decode import gka_decode

    q, k, v, g, a = make(B, T0 + T1, H, D, DV, dtype, gen)
    res = {"case": name, "B": B, "T0": T0, "T1": T1, "D": D, "dtype": str(dtype).replace("torch.", ""),
           "num_iter": num_iter}  # fmt: skip
    with torch.no_grad():
        _, st = gka_exact(*(x[:, :T0].double() for x in (q, k, v, g, a)), output_final_state=True)
        st = tuple(s_.float() for s_ in st)
        outs, s = [], st
        for t in range(T0, T0 + T1):
            sl = slice(t, t + 1)
            o1, s = gka_decode(q[:, sl], k[:, sl], v[:, sl], g[:, sl], a[:, sl], s, num_iter=num_iter)
            outs.append(o1)
        od = torch.cat(outs, 1)
        sl = slice(T0, T0 + T1)
        om, sm = gka_decode(q[:, sl], k[:, sl], v[:, sl], g[:, sl], a[:, sl], st, num_iter=num_iter)
        oe, se = gka_exact(*(x.double() for x in (q, k, v, g, a)), output_final_state=True)
        res.update({"decode_vs_exact": rel(od, oe[:, T0:]), "multi_vs_exact": rel(om, oe[:, T0:]),
                    "state_vs_exact": rel(s[0], se[0]), "state_kv_vs_exact": rel(s[1], se[1]),
                    "multi_state_vs_single": rel(sm[0], s[0])})  # fmt: skip
        if with_chunk:
            oc, _ = chunk_gka(q, k, v, g, a, num_iter=num_iter, initial_state=None)
            res["chunk_vs_exact"] = rel(oc[:, T0:], oe[:, T0:])
            res["decode_vs_chunk"] = rel(od, oc[:, T0:])
    return res


def degenerate_case():
    """All-zero keys: H stays 0, the norm floor must keep everything finite (fwd and bwd)."""
    from gkabench.kernels.gka.chunk import chunk_gka

    B, T, H, D = 1, 70, 2, 64
    q = F.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1).requires_grad_()
    k = torch.zeros(B, T, H, D, device="cuda", requires_grad=True)
    v = torch.randn(B, T, H, D, device="cuda", requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 4).requires_grad_()
    a = torch.rand(B, T, H, device="cuda").requires_grad_()
    o, _ = chunk_gka(q, k, v, g, a)
    o.sum().backward()
    fin = all(torch.isfinite(t).all().item() for t in (o, q.grad, k.grad, v.grad, g.grad, a.grad))
    return {"case": "zero_keys", "finite": fin}


def flops_per_token_head(D, num_iter, C=64):
    return num_iter * (2 * D * D + 4 * C * D)


def time_gdn(row, T, B, q, k, v, g, do, gen, H):
    """fla's chunk_gated_delta_rule on the same q, k, v, g (beta random) into ``row``: gdn_fwd_ms, gdn_fb_ms,
    gdn_peak_gib. fla's Hopper guard is lifted by the caller (timing only; `gkabench check` covers correctness)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    beta = torch.rand(B, T, H, device="cuda", generator=gen).sigmoid().to(torch.bfloat16)
    gl = [x.clone().requires_grad_() for x in (q, k, v)]

    def gdn_fwd():
        return chunk_gated_delta_rule(q, k, v, g, beta)

    def gdn_fb():
        o, _ = chunk_gated_delta_rule(gl[0], gl[1], gl[2], g, beta)
        o.backward(do)

    time_fwd_fb(row, "gdn", gdn_fwd, gdn_fb, gl)


def time_fwd_fb(row, prefix, fwd, fb, leaves):
    """Median ms of ``fwd`` and ``fb`` (do_bench; ``leaves``' grads reset between calls) and the allocator peak of
    one ``fb`` into ``row`` as ``<prefix>_fwd_ms``, ``<prefix>_fb_ms``, ``<prefix>_peak_gib``; a failure is logged."""
    from triton.testing import do_bench

    try:
        row[f"{prefix}_fwd_ms"] = do_bench(fwd, warmup=50, rep=300, return_mode="median")
        row[f"{prefix}_fb_ms"] = do_bench(fb, warmup=50, rep=300, grad_to_none=leaves, return_mode="median")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fb()
        torch.cuda.synchronize()
        row[f"{prefix}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())


def bench(args):
    from triton.testing import do_bench

    from gkabench.kernels.gka.chunk import chunk_gka
    from gkabench.kernels.gka.decode import gka_decode

    try:
        import fla  # noqa: F401
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

        fla_chunk_o.TRITON_ABOVE_3_7_1 = True  # lift fla's Hopper guard (triton < 3.7.1) for timing only
        have_fla = True
    except Exception as exc:  # noqa: BLE001
        log("fla not importable:", repr(exc))
        have_fla = False

    H, D, TOK, R = 16, 128, 32768, args.num_iter
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(1234)

    def inputs(T):
        B = TOK // T
        q, k, v, g, a = make(B, T, H, D, D, torch.bfloat16, gen)
        return B, q, k, v, g, a, torch.randn_like(v)

    # T = 8192 first (the issue's headline ratios), and fla's GDN right after GKA at each T: the side-by-side
    # numbers come before the per-launch study (run 4 ran out of budget before GDN when it came last)
    for T in sorted(args.T, key=lambda t: t != 8192):
        B, q, k, v, g, a, do = inputs(T)
        row = {"T": T, "B": B}
        leaves = [x.clone().requires_grad_() for x in (q, k, v, g, a)]

        def gka_fwd():
            return chunk_gka(q, k, v, g, a, num_iter=R)

        def gka_fb():
            o, _ = chunk_gka(*leaves, num_iter=R)
            o.backward(do)

        time_fwd_fb(row, "gka", gka_fwd, gka_fb, leaves)
        rows.append(row)
        del leaves
        torch.cuda.empty_cache()
        if have_fla and left(args.budget_s) >= 60:
            time_gdn(row, T, B, q, k, v, g, do, gen, H)
        else:
            log("GDN skipped at T", T)
        log(json.dumps(row))
        torch.cuda.empty_cache()
    # per-launch times at T=8192 (where the time goes), for both kernel layouts of the bf16 path (chunk_fwd.VARIANTS)
    stages = {}
    try:
        from gkabench.kernels.gka.chunk import prepare_indices
        from gkabench.kernels.gka.chunk_bwd import grads_bwd, scan_bwd, solve_bwd
        from gkabench.kernels.gka.chunk_fwd import VARIANTS, prep_fwd, scan_fwd, solve_fwd

        T, B = 8192, TOK // 8192
        q, k, v, g, a = (
            x.reshape(B * T, H, -1).squeeze(-1).contiguous() for x in make(B, T, H, D, D, torch.bfloat16, gen)
        )
        do = torch.randn_like(v)
        idx = prepare_indices(list(range(0, B * T + 1, T)), q.device)
        sc = D**-0.5
        hs, us, _, _ = scan_fwd(k, v, g, None, idx)
        stages["scan_fwd"] = do_bench(lambda: scan_fwd(k, v, g, None, idx), return_mode="median")
        # per-launch times of the two kernel layouts ("prep_fwd" is prep's forward launches plus fused's adjoint
        # solve); keys without a suffix are prep's, "@fused" the fused layout's
        for variant in ("prep", "fused"):
            sfx = "" if variant == "prep" else "@" + variant
            if left(args.budget_s) < 60:
                log("stages: budget, skipped variant", variant)
                continue
            prep = prep_fwd(k, g, hs, idx) if variant == "prep" else None
            _, x, n = solve_fwd(q, k, v, g, a, hs, us, idx, num_iter=R, ridge=0.02, scale=sc, prep=prep)
            pb = prep[:2] if prep is not None else None
            _, _, y, beta, e, tau, sigma = solve_bwd(q, k, v, g, a, hs, us, x, n, do, idx, num_iter=R, ridge=0.02,
                                                     scale=sc, prep=pb)  # fmt: skip
            if prep is not None:
                stages["prep" + sfx] = do_bench(lambda: prep_fwd(k, g, hs, idx), return_mode="median")
            stages["solve_fwd" + sfx] = do_bench(
                lambda: solve_fwd(q, k, v, g, a, hs, us, idx, num_iter=R, ridge=0.02, scale=sc, prep=prep),
                return_mode="median",
            )
            stages["solve_fwd_r0" + sfx] = do_bench(
                lambda: solve_fwd(q, k, v, g, a, hs, us, idx, num_iter=0, ridge=0.02, scale=sc, prep=prep),
                return_mode="median",
            )
            stages["solve_bwd" + sfx] = do_bench(
                lambda: solve_bwd(q, k, v, g, a, hs, us, x, n, do, idx, num_iter=R, ridge=0.02, scale=sc, prep=pb),
                return_mode="median",
            )
            if variant == "prep":  # these two launches are the same for both layouts
                dhs, dus, _, _ = scan_bwd(q, k, x, y, a, g, tau, sigma, hs, do, None, idx, scale=sc)
                stages["scan_bwd"] = do_bench(
                    lambda: scan_bwd(q, k, x, y, a, g, tau, sigma, hs, do, None, idx, scale=sc), return_mode="median"
                )
                stages["grads_bwd"] = do_bench(
                    lambda: grads_bwd(q, k, v, g, a, hs, x, y, beta, do, dhs, dus, e.clone(), idx, scale=sc),
                    return_mode="median",
                )
            torch.cuda.empty_cache()
        # the whole op, forward + backward, per variant (what a user gets from chunk_gka(..., variant=...))
        from gkabench.kernels.gka.chunk import chunk_gka

        q4, k4, v4, g4, a4 = (t.detach().requires_grad_() for t in make(B, T, H, D, D, torch.bfloat16, gen))
        do4 = torch.randn_like(v4)
        for variant in VARIANTS:
            if left(args.budget_s) < 45:
                log("fwdbwd per variant: budget, skipped", variant)
                break

            def fb(variant=variant):
                o = chunk_gka(q4, k4, v4, g4, a4, num_iter=R, variant=variant)[0]
                torch.autograd.grad(o, (q4, k4, v4, g4, a4), do4)

            stages["fwdbwd@" + variant] = do_bench(fb, return_mode="median")
        log("stages_ms_T8192", json.dumps(stages))
        from gkabench.kernels.gka import chunk_bwd as _cb
        from gkabench.kernels.gka import chunk_fwd as _cf

        chosen = {name: str(getattr(getattr(mod, attr, None), "best_config", None)) for name, mod, attr in (
            ("scan_fwd", _cf, "_scan_fwd_tuned"), ("scan_bwd", _cb, "_scan_bwd_tuned"), ("prep", _cf, "_prep_tuned"),
            ("grads_u", _cb, "_grads_u_tuned"), ("grads_h", _cb, "_grads_h_tuned"))}  # fmt: skip
        log("configs chosen by the autotuner (tiles / warps / stages):", json.dumps(chosen))
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    # Where the whole fwd+bwd goes, kernel by kernel (run 2: fwd+bwd 22.8 ms at T=8192 but the launches timed one
    # by one sum to ~16.5 ms; the profile names the rest)
    try:
        B, q, k, v, g, a, do = inputs(8192)
        leaves = [x.clone().requires_grad_() for x in (q, k, v, g, a)]

        def fb_once():
            o, _ = chunk_gka(*leaves, num_iter=R)
            o.backward(do)

        fb_once()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fb_once()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
        log("profile of 3 x fwd+bwd at T=8192 (CUDA time; divide by 3 per call):\n" + table)
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())

    dec = {}
    for Bd in (1, 64):
        try:
            q, k, v, g, a = make(Bd, 1, H, D, D, torch.bfloat16, gen)
            st = (
                torch.zeros(Bd, H, D, D, device="cuda") + torch.eye(D, device="cuda"),
                torch.randn(Bd, H, D, D, device="cuda"),
            )
            dec[f"gka_decode_us_b{Bd}"] = 1e3 * do_bench(
                lambda: gka_decode(q, k, v, g, a, st, num_iter=R), return_mode="median"
            )
            if have_fla:
                beta = torch.rand(Bd, 1, H, device="cuda").sigmoid().to(torch.bfloat16)
                s0 = torch.randn(Bd, H, D, D, device="cuda")
                dec[f"gdn_decode_us_b{Bd}"] = 1e3 * do_bench(
                    lambda: fused_recurrent_gated_delta_rule(
                        q, k, v, g, beta=beta, initial_state=s0, output_final_state=True
                    ),
                    return_mode="median")  # fmt: skip
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    log("decode", json.dumps(dec))
    for row in rows:
        fl = flops_per_token_head(D, R) * H * TOK
        for key in ("gka_fwd", "gka_fb", "gdn_fwd", "gdn_fb"):
            if key + "_ms" in row:
                row[key + "_mtoks"] = TOK / (row[key + "_ms"] * 1e-3) / 1e6
        if "gka_fwd_ms" in row:
            row["gka_fwd_tflops"] = fl / (row["gka_fwd_ms"] * 1e-3) / 1e12
        if "gka_fb_ms" in row:
            row["gka_fb_tflops"] = 2 * fl / (row["gka_fb_ms"] * 1e-3) / 1e12
        if "gdn_fb_ms" in row and "gka_fb_ms" in row:
            row["ratio_fb"] = row["gdn_fb_ms"] / row["gka_fb_ms"]
            row["ratio_fwd"] = row["gdn_fwd_ms"] / row["gka_fwd_ms"]
        log(json.dumps(row))

    return rows, stages, dec


T_START = time.time()


def left(budget):
    return budget - (time.time() - T_START)


def run_case(fn, name, checks, **kw):
    try:
        r = fn(name, **kw)
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
        r = {"case": name, "error": True}
    log(json.dumps(r))
    checks.append(r)


def report(env, checks, rows, stages, dec, args):
    with open(os.path.join(OUT, "gka_kernels.json"), "w") as f:
        json.dump({"env": env, "checks": checks, "bench": rows, "stages_ms_T8192": stages, "decode": dec}, f, indent=1)
    log("\n=== accuracy (rel. error vs gka_exact float64) ===")
    keys = ["o", "h_kk", "dq", "dk", "dv", "dg", "dalpha", "dh0_kk"]
    log(f"{'case':28s} " + " ".join(f"{k:>8s}" for k in keys))
    for r in checks:
        if "o" in r:
            log(f"{r['case']:28s} " + " ".join(f"{r[k]:8.1e}" if k in r else f"{'-':>8s}" for k in keys))
        else:
            log(r["case"], {k: (f"{v:.1e}" if isinstance(v, float) else v) for k, v in r.items() if k != "case"})
    log("\n=== speed (bf16, H16, D128, 32k tok/call, r=%d) ===" % args.num_iter)
    log(f"{'T':>6s} {'gka fwd':>8s} {'gka f+b':>8s} {'gdn fwd':>8s} {'gdn f+b':>8s} {'r fwd':>6s} {'r f+b':>6s} "
        f"{'TF fwd':>7s} {'TF f+b':>7s} {'GiB gka':>7s} {'GiB gdn':>7s}   (Mtok/s)")  # fmt: skip

    def f(r, k, fmt="8.2f"):
        return format(r[k], fmt) if k in r else "-"

    for r in rows:
        log(f"{r['T']:6d} {f(r,'gka_fwd_mtoks'):>8s} {f(r,'gka_fb_mtoks'):>8s} {f(r,'gdn_fwd_mtoks'):>8s} "
            f"{f(r,'gdn_fb_mtoks'):>8s} {f(r,'ratio_fwd','6.2f'):>6s} {f(r,'ratio_fb','6.2f'):>6s} "
            f"{f(r,'gka_fwd_tflops','7.1f'):>7s} {f(r,'gka_fb_tflops','7.1f'):>7s} {f(r,'gka_peak_gib','7.2f'):>7s} "
            f"{f(r,'gdn_peak_gib','7.2f'):>7s}")  # fmt: skip
    if stages:
        log("stages ms @T=8192:", " ".join(f"{k}={v:.3f}" for k, v in stages.items()))
    if dec:
        log("decode us:", " ".join(f"{k}={v:.1f}" for k, v in dec.items()))


def main():
    from gkabench.kernels.parallel_compile import enable_on_cuda, stats

    enable_on_cuda()
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--num-iter", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=380.0, help="start no new phase/case after this many seconds")
    args = ap.parse_args()
    import triton

    env = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "command": " ".join(sys.argv),
    }  # fmt: skip
    try:
        import fla

        env["fla"] = fla.__version__
    except Exception:  # noqa: BLE001
        env["fla"] = None
    log("env", json.dumps(env), "| parallel compile:", json.dumps(stats()))
    checks, rows, stages, dec = [], [], {}, {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    # phase 1: low-precision accuracy (compiles the kernels the benchmark uses)
    lowp_cases = [
        ("bf16_r30", dict(B=2, T=200, H=3, D=128, DV=128, dtype=torch.bfloat16, num_iter=30)),
        (
            "bf16_r30_varlen_state",
            dict(
                B=1, T=300, H=2, D=128, DV=64, dtype=torch.bfloat16, num_iter=30, cu=[0, 50, 51, 177, 300], state=True
            ),
        ),
        ("bf16_r30_T512_fwd", dict(B=1, T=512, H=4, D=128, DV=128, dtype=torch.bfloat16, num_iter=30, grads=False)),
        ("bf16_r30_alpha1", dict(B=1, T=256, H=2, D=128, DV=128, dtype=torch.bfloat16, num_iter=30, alpha_one=True)),
    ]
    # both kernel layouts of the bf16 path on the same inputs (the default is "prep" since session 2; run 2 measured
    # only "fused"): if "prep" misses the 1e-2 goal where "fused" meets it, the default goes back to "fused"
    for seed, (name, kw) in enumerate([lowp_cases[0], lowp_cases[3]], start=100):
        for variant in ("prep", "fused", "prep_fwd"):
            lowp_cases.append((f"{name}_seed{seed}@{variant}", dict(kw, variant=variant, seed=seed)))
    if not args.skip_check:
        for name, kw in lowp_cases:
            run_case(check_case, name, checks, gen=gen, **kw)
        run_case(decode_case, "decode_bf16_r30", checks, B=3, T0=70, T1=3, H=2, D=128, DV=128, dtype=torch.bfloat16,
                 num_iter=30, gen=gen)  # fmt: skip
        run_case(decode_case, "decode_fp32_r80", checks, B=3, T0=70, T1=3, H=2, D=128, DV=128, dtype=torch.float32,
                 num_iter=80, gen=gen, with_chunk=False)  # fmt: skip
        run_case(lambda name: degenerate_case(), "zero_keys", checks)
        report(env, checks, rows, stages, dec, args)
    # phase 2: speed
    if not args.skip_bench and left(args.budget_s) > 60:
        rows, stages, dec = bench(args)
        report(env, checks, rows, stages, dec, args)
    # phase 3: fp32 accuracy (slow to compile: full-fp32 dots without tensor cores), while the budget lasts
    fp32_cases = [
        (
            "fp32_r80_varlen_state",
            dict(B=1, T=300, H=2, D=128, DV=64, dtype=torch.float32, num_iter=80, cu=[0, 50, 51, 177, 300], state=True),
        ),
        ("fp32_r30", dict(B=2, T=200, H=3, D=128, DV=128, dtype=torch.float32, num_iter=30)),
        ("fp32_r80_D64_Dv32_state", dict(B=2, T=150, H=2, D=64, DV=32, dtype=torch.float32, num_iter=80, state=True)),
    ]
    if not args.skip_check:
        for name, kw in fp32_cases:
            if left(args.budget_s) < 30:
                log("budget: skipped", name)
                continue
            run_case(check_case, name, checks, gen=gen, **kw)
            report(env, checks, rows, stages, dec, args)
    log("parallel compile (configs pre-compiled on threads, tuning rounds):", json.dumps(stats()))
    report(env, checks, rows, stages, dec, args)


if __name__ == "__main__":
    main()
