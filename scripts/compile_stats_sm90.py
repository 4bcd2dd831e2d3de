"""Offline compile statistics of the GKA Triton kernels for sm_90 (H200), no GPU needed.

Compiles each kernel with the device's Triton (3.6.0, installed apart from the repo venv's triton) for
``GPUTarget('cuda', 90, 128)`` at the benchmark's sizes (bf16 inputs, D = Dv = 128, C = 64), then runs the
wheel's own ``ptxas -v`` (same flags as Triton's build) and ``cuobjdump -sass`` on the result and prints one row
per kernel: registers, spill bytes, stack frame, shared memory, and for the kernel's hottest loop (the loop with
the most HGMMA instructions: the Chebyshev loop of the solve kernels, the chunk loop of the scans) the SASS
instruction, HGMMA, LDL and STL counts per iteration.

Setup once (leaves the repo venv's triton alone)::

    .venv/bin/python -m pip install --no-deps --target /tmp/triton36 triton==3.6.0

Run from the repo root::

    .venv/bin/python scripts/compile_stats_sm90.py [--kernels solve_fwd solve_bwd] [--variants prep fused]
        [--dump DIR] [--json FILE]

Each kernel compiles in its own worker process (spawned, with ``/tmp/triton36`` first on sys.path and a private
Triton cache), so no state crosses kernels and the table is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = DV = 128
C = 64
FLOOR = 1e-6


def _kernel_specs():
    """(name, variant, kernel fn, {arg: type} for runtime args, {arg: value} constexprs, num_warps, num_stages).

    Types follow what the launchers pass in the benchmark: q, k, v, o, dq, dk, dv, U states bf16 (LOWP), g and
    alpha float32, H states / x / y / norms float32, index tensors int32. ``num_iter`` is do_not_specialize (i32).
    """
    from gkabench.kernels.gka import chunk_bwd as B
    from gkabench.kernels.gka import chunk_fwd as F

    bf, f32, i32 = "*bf16", "*fp32", "*i32"
    per_chunk = dict(H=16, D=D, DV=DV, BD=D, BDV=DV, C=C)
    specs = []
    # (getattr defaults: the same table also compiles a checkout from before the prep/fused split, see --root)
    solve_stages = getattr(F, "SOLVE_STAGES", 3)
    for variant in getattr(F, "VARIANTS", ("fused",)):
        prep = variant == "prep"
        fwd_args = dict(q=bf, k=bf, v=bf, g=f32, alpha=f32, hs=f32, us=bf, hn="*fp16", n0o=f32, o=bf, xo=f32,
                        no=f32, chunk_info=i32, scale="fp32", ridge="fp32", num_iter="i32")  # fmt: skip
        specs.append(("solve_fwd", variant, F._solve_fwd_kernel, fwd_args,
                      dict(per_chunk, FLOOR=FLOOR, LOWP=True, PREC="tf32", PREP=prep), 4, solve_stages))  # fmt: skip
        bwd_args = dict(q=bf, k=bf, v=bf, g=f32, alpha=f32, hs=f32, us=bf, xo=f32, no=f32, do=bf, dq=bf, dalpha=f32,
                        yo=f32, betao=f32, eo=f32, tauo=f32, sigmao=f32, chunk_info=i32, scale="fp32", ridge="fp32",
                        num_iter="i32", hn="*fp16", n0o=f32, rbuf="*fp16")  # fmt: skip
        specs.append(("solve_bwd", variant, B._solve_bwd_kernel, bwd_args,
                      dict(per_chunk, FLOOR=FLOOR, LOWP=True, PREC="tf32", PREP=prep), 4, solve_stages))  # fmt: skip
    if hasattr(F, "_prep_kernel"):  # at every warps count the GPU autotuner tries (label wN)
        prep_warps = [c.num_warps for c in getattr(F, "PREP_CONFIGS", [])] or [getattr(F, "PREP_WARPS", 4)]
        for w in prep_warps:
            specs.append(("prep", f"w{w}", F._prep_kernel,
                          dict(k=bf, g=f32, hs=f32, hn="*fp16", n0o=f32, no=f32, chunk_info=i32),
                          dict(H=16, D=D, BD=D, C=C, FLOOR=FLOOR, PREC="tf32"), w, 1))  # fmt: skip
    # the scans are autotuned on the GPU over chunk_fwd.SCAN_CONFIGS: compile every config (label bTwNsM: tile T x T)
    scan_cfgs = [(c.kwargs.get("BK", 64), c.kwargs.get("BW", 64), c.num_warps, c.num_stages)
                 for c in getattr(F, "SCAN_CONFIGS", [])] or [(64, 64, 4, 3)]  # fmt: skip
    for bk, bw, w, st in scan_cfgs:
        tiles = dict(BK=bk, BW=bw, NWH=-(-D // bw))
        specs.append(("scan_fwd", f"b{bk}w{w}s{st}", F._scan_fwd_kernel,
                      dict(k=bf, v=bf, g=f32, h0_kk=f32, h0_kv=f32, hs=f32, us=bf, ht_kk=f32, ht_kv=f32, seq_info=i32),
                      dict(H=16, D=D, DV=DV, C=C, **tiles, HAS_H0=False, PREC="tf32"), w, st))  # fmt: skip
        specs.append(("scan_bwd", f"b{bk}w{w}s{st}", B._scan_bwd_kernel,
                      dict(q=bf, k=bf, xo=f32, yo=f32, alpha=f32, g=f32, tauo=f32, sigmao=f32, hs=f32, do=bf, dht=f32,
                           dut=f32, dhs=f32, dus=f32, dh0=f32, du0=f32, seq_info=i32, scale="fp32"),
                      dict(H=16, D=D, DV=DV, C=C, **tiles, HAS_DHT=False, PREC="tf32"), w, st))  # fmt: skip
    # the grads kernels at the warps / stages they may be launched with (label wNsM)
    grads_cfgs = [(c.num_warps, c.num_stages) for c in getattr(B, "GRADS_CONFIGS", [])] or [(4, 3)]
    for w, st in grads_cfgs:
        specs.append(("grads_u", f"w{w}s{st}", B._grads_u_kernel,
                      dict(q=bf, k=bf, v=bf, g=f32, alpha=f32, xo=f32, do=bf, dus=f32, eo=f32, dk32=f32, dv=bf,
                           chunk_info=i32, scale="fp32"),
                      dict(per_chunk, PREC="tf32"), w, st))  # fmt: skip
        specs.append(("grads_h", f"w{w}s{st}", B._grads_h_kernel,
                      dict(k=bf, g=f32, hs=f32, xo=f32, yo=f32, betao=f32, dhs=f32, eo=f32, dk32=f32, dk=bf,
                           chunk_info=i32),
                      dict(H=16, D=D, BD=D, C=C, LOWP=True, PREC="tf32"), w, st))  # fmt: skip
    return specs


def _sass_loop_stats(sass: str) -> dict:
    """Per-iteration counts of the loop (backward branch) holding the most HGMMA instructions, innermost first."""
    insts = []  # (address, opcode text); cuobjdump prints absolute branch targets
    for ln in sass.splitlines():
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", ln)
        if m:
            insts.append((int(m.group(1), 16), m.group(2)))
    best = None
    for a, text in insts:
        m = re.search(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= a:
            continue
        lo = int(m.group(1), 16)
        body = [t for j, t in insts if lo <= j <= a]
        st = {
            "insts": len(body),
            "hgmma": sum("HGMMA" in t for t in body),
            "ldl": sum(re.search(r"\bLDL\b", t) is not None for t in body),
            "stl": sum(re.search(r"\bSTL\b", t) is not None for t in body),
        }
        # prefer the loop with the most HGMMA; among equals the smallest (innermost)
        if st["hgmma"] and (best is None or (st["hgmma"], -st["insts"]) > (best["hgmma"], -best["insts"])):
            best = st
    total = {
        "insts_total": len(insts),
        "ldl_total": sum(re.search(r"\bLDL\b", t) is not None for _, t in insts),
        "stl_total": sum(re.search(r"\bSTL\b", t) is not None for _, t in insts),
    }
    return {**(best or {"insts": 0, "hgmma": 0, "ldl": 0, "stl": 0}), **total}


def _compile_one(args):
    name, variant, dump = args
    triton_path = os.environ["GKA_TRITON_PATH"]
    sys.path.insert(0, triton_path)
    sys.path.insert(1, os.environ["GKA_ROOT"])
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tcache36_")
    import triton
    from triton.backends.compiler import GPUTarget

    spec = next(s for s in _kernel_specs() if s[0] == name and s[1] == variant)
    _, _, fn, rt, cx, nw, ns = spec
    fn = getattr(fn, "fn", fn) if not hasattr(fn, "arg_names") else fn
    sig, attrs = {}, {}
    cx = {a: v for a, v in cx.items() if a in fn.arg_names}
    for i, arg in enumerate(fn.arg_names):
        if arg in cx:
            sig[arg] = "constexpr"
        else:
            sig[arg] = rt[arg]
            if rt[arg].startswith("*") and not os.environ.get("GKA_NO_ALIGN"):  # the launcher's tensors are 16-byte aligned, as the JIT specialises them
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 128), options={"num_warps": nw, "num_stages": ns})
    nvbin = os.path.join(triton_path, "triton", "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as td:
        ptx = os.path.join(td, "k.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        log = subprocess.run([os.path.join(nvbin, "ptxas"), "-lineinfo", "-v", "--gpu-name=sm_90a", ptx, "-o",
                              os.path.join(td, "k.o")], capture_output=True, text=True, check=True).stderr  # fmt: skip
        cub = os.path.join(td, "k.cubin")
        with open(cub, "wb") as f:
            f.write(k.asm["cubin"])
        sass = subprocess.run([os.path.join(nvbin, "cuobjdump"), "-sass", cub], capture_output=True, text=True,
                              check=True).stdout
    if dump:
        os.makedirs(dump, exist_ok=True)
        for ext in ("ttgir", "ptx"):
            with open(os.path.join(dump, f"{name}_{variant}.{ext}"), "w") as f:
                f.write(k.asm[ext])
        with open(os.path.join(dump, f"{name}_{variant}.sass"), "w") as f:
            f.write(sass)

    def grab(pat):
        m = re.search(pat, log)
        return int(m.group(1)) if m else -1

    row = {
        "kernel": name, "variant": variant, "warps": nw, "stages": ns,
        "regs": grab(r"Used (\d+) registers"), "stack": grab(r"(\d+) bytes stack frame"),
        "spill_st": grab(r"(\d+) bytes spill stores"), "spill_ld": grab(r"(\d+) bytes spill loads"),
        "smem": k.metadata.shared,
    }  # fmt: skip
    row.update(_sass_loop_stats(sass))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", nargs="*", default=None, help="names (solve_fwd solve_bwd prep scan_fwd ...)")
    ap.add_argument("--variants", nargs="*", default=None, help="prep / fused (solve kernels); '-' for the others")
    ap.add_argument("--dump", default=None, help="write ttgir / ptx / sass per kernel here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--root", default=ROOT, help="checkout whose gkabench kernels to compile (e.g. a git worktree)")
    ap.add_argument("--triton", default="/tmp/triton36", help="directory holding triton 3.6 (pip --target)")
    ap.add_argument("--no-align", action="store_true",
                    help="no tt.divisibility=16 on pointers (how the session-1 table in NOTES.md was built; the JIT "
                         "marks 16-byte-aligned tensor pointers, so the default is what the device compiles)")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args()
    os.environ["GKA_ROOT"] = os.path.abspath(args.root)
    if args.no_align:
        os.environ["GKA_NO_ALIGN"] = "1"
    os.environ["GKA_TRITON_PATH"] = os.path.abspath(args.triton)
    sys.path.insert(0, os.environ["GKA_ROOT"])
    # only the names and variants here (the repo venv's triton is enough to list them)
    todo = [(s[0], s[1], args.dump) for s in _kernel_specs()
            if (args.kernels is None or s[0] in args.kernels)
            and (args.variants is None or s[1] in args.variants or s[1] == "-")]  # fmt: skip
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as ex:
        rows = list(ex.map(_compile_one, todo))
    hdr = (f"{'kernel':10s} {'variant':7s} {'warps':>5s} {'regs':>4s} {'spill st/ld B':>14s} {'stack':>6s} "
           f"{'smem KB':>7s} | {'loop: insts':>11s} {'HGMMA':>5s} {'LDL':>4s} {'STL':>4s} | {'all LDL/STL':>11s}")  # fmt: skip
    print(hdr)
    for r in rows:
        print(f"{r['kernel']:10s} {r['variant']:7s} {r['warps']:5d} {r['regs']:4d} "
              f"{str(r['spill_st']) + '/' + str(r['spill_ld']):>14s} {r['stack']:6d} {r['smem'] / 1024:7.1f} | "
              f"{r['insts']:11d} {r['hgmma']:5d} {r['ldl']:4d} {r['stl']:4d} | "
              f"{str(r['ldl_total']) + '/' + str(r['stl_total']):>11s}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
