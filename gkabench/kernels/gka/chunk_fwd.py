"""Forward Triton kernels of chunked GKA (gka-spec.md section 3).

Two launches:

1. ``_scan_fwd_kernel``: chunk-initial states ``H_[c]`` (``[NT, H, D, D]``) and ``U_[c]`` (``[NT, H, D, Dv]``),
   accumulated in float32 (U stored in the input dtype for bf16/fp16), by a sequential scan over the chunks of
   each sequence, plus the final states. One program per
   (row tile, column tile, sequence x head); the H columns and the U columns are separate column tiles of the
   same launch.
2. ``_solve_fwd_kernel``: one program per (chunk, head): closed-form norms, ``num_iter`` Chebyshev steps on-chip,
   alpha mixing and the gated-linear-attention readout ``o = scale * U_t qt``. Saves ``x`` (float32) and the
   norms for the backward.

Tokens are flattened: q, k ``[TT, H, D]``, v ``[TT, H, Dv]``, g, alpha ``[TT, H]``, contiguous; sequences and
chunks are described by the index tensors of :func:`gkabench.kernels.gka.chunk.prepare_indices`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import NORM_FLOOR
from .solve import (
    chebyshev,
    chebyshev_lowp,
    chunk_norms,
    chunk_tokens,
    decay_lower,
    load_rows,
    load_tile,
    scan_tile_start,
    solve_operands,
)

CHUNK = 64

# Launch configs tried for the two sequential state scans on a GPU (autotuned once per (H, D, Dv); with Triton's
# result cache the choice survives the process). The scans are chains of per-chunk steps whose time is the latency
# of one step (device run 2: 7.7 us per chunk step for scan_fwd at T=8192; run 3: scan_fwd 0.98 ms, scan_bwd 1.81
# ms), so what can matter is the pipelining depth, the warps per program and how many programs share the chain:
# 32 x 32 state tiles give four times the programs of 64 x 64 (T=8192, 4 x 16 heads, D=128: 2048 instead of 512
# on 132 SMs), each step a quarter of the work. The interpreter (CPU tests) runs the plain kernel, 64 x 64 tiles
# at 4 warps.
# Six configs (each is compiled once per dtype on a fresh machine, ~2 s apiece); the sm_90 build of these tiles:
# 64-tiles at 4 warps spill in scan_bwd (8 warps do not), 32-tiles at 2 warps spill in scan_bwd beyond 1 stage.
SCAN_CONFIGS = [
    triton.Config({"BK": b, "BW": b}, num_warps=w, num_stages=st)
    for b, w, st in ((64, 4, 1), (64, 8, 1), (64, 8, 3), (32, 4, 1), (32, 4, 3), (32, 2, 1))
]


def _fit_scan_configs(configs, named_args, **kwargs):
    """Drop tiles larger than the state (D = 16 or 32): the plain launch caps them the same way."""
    D = kwargs.get("D", named_args.get("D"))
    DV = kwargs.get("DV", named_args.get("DV"))
    bk_max, bw_max = triton.next_power_of_2(D), triton.next_power_of_2(min(D, DV))
    fit = [c for c in configs if c.kwargs["BK"] <= bk_max and c.kwargs["BW"] <= bw_max]
    return fit or [triton.Config({"BK": bk_max, "BW": bw_max}, num_warps=4, num_stages=2)]


# Tests only: take the GPU launch paths (the autotuned kernels) for CPU tensors too, under Triton's interpreter
# with a stubbed benchmarker, so that those paths are exercised without a GPU.
AUTOTUNE_ON_CPU = False


def pick_launch(plain, tuned, x: torch.Tensor, num_warps: int, force_plain: bool = False):
    """(kernel, launch options) for a launch on ``x``'s device: the autotuned kernel (its configs set warps and
    stages) for CUDA tensors or under AUTOTUNE_ON_CPU, else the plain kernel at ``num_warps`` (the interpreter)."""
    if (x.is_cuda or AUTOTUNE_ON_CPU) and not force_plain:
        return tuned, {}
    return plain, {"num_warps": num_warps}


def warp_configs(*warps: int) -> list:
    """Autotune configs that differ only in warps (kernels without a pipelined loop: one stage)."""
    return [triton.Config({}, num_warps=w, num_stages=1) for w in warps]


def autotuned(kernel, configs, key, **options):
    """``triton.autotune`` with Triton's on-disk result cache where this Triton has it (so a choice survives the
    process and travels in the packed cache). Only for kernels that store their outputs, or with
    ``restore_value`` naming what they update in place: the tuning reruns them."""
    import inspect

    if "cache_results" in inspect.signature(triton.autotune).parameters:
        options["cache_results"] = True
    return triton.autotune(configs=configs, key=key, **options)(kernel)


def scan_autotuned(kernel):
    """``kernel`` autotuned over :data:`SCAN_CONFIGS` (tile sizes, warps, stages; NWH, the number of H column
    tiles, follows from D and BW); the scans only store their outputs."""
    with_nwh = triton.heuristics({"NWH": lambda a: triton.cdiv(a["D"], a["BW"])})(kernel)
    return autotuned(with_nwh, SCAN_CONFIGS, ["H", "D", "DV"], prune_configs_by={"early_config_prune": _fit_scan_configs})


def scan_launch(plain, tuned, x: torch.Tensor, D: int, DV: int, programs: int, BK: int, BW: int, force_tiles: bool):
    """(kernel, grid, launch kwargs) of a state scan over ``programs`` = sequences x heads: the autotuned kernel
    picks its tiles and the grid follows them; the plain kernel (interpreter, or ``force_tiles``) runs ``BK`` x
    ``BW`` tiles capped at the state's size, at 4 warps."""
    kernel, launch = pick_launch(plain, tuned, x, 4, force_plain=force_tiles)
    if kernel is tuned:
        return kernel, (lambda meta: (triton.cdiv(D, meta["BK"]), triton.cdiv(D, meta["BW"]) + triton.cdiv(DV, meta["BW"]), programs)), launch
    BK = min(BK, triton.next_power_of_2(D))
    BW = min(BW, triton.next_power_of_2(min(D, DV)))
    nwh = triton.cdiv(D, BW)
    return kernel, (triton.cdiv(D, BK), nwh + triton.cdiv(DV, BW), programs), {**launch, "BK": BK, "BW": BW, "NWH": nwh}


# "prep": a per-(chunk, head) launch writes the float16 solve operand H0/||H0||, ||H0|| and the norms, and the
# solve kernels never hold the float32 state nor (forward) the query tile across the Chebyshev loop; "fused":
# the session-1 kernels (norms and operands computed inside the solve kernels). bf16/fp16 only: fp32 inputs
# always run the fused code (its 'ieee' dots need the float32 state anyway). Kept selectable for one release so
# that one device run can time both. "prep_fwd": prep's forward with fused's adjoint solve (device run 3: the
# prep forward saved 1.5 ms, its adjoint solve cost 0.7 ms more than fused's, 4.42 vs 3.74 ms at T = 8192); the
# float16 operands then need not be kept for the backward. Device run 4 (session 4, T = 8192, 32k tokens): whole
# forward+backward 15.48 ms (prep_fwd) vs 16.23 (prep) vs 16.88 (fused), the same accuracy on the same seeds: the
# default since.
VARIANTS = ("prep", "fused", "prep_fwd")
DEFAULT_VARIANT = "prep_fwd"
# the prep kernel has no chained dots, so 8 warps split its tiles (sm_90 build: 235 registers, no spills; 4 warps
# spilled 560 bytes of stack)
PREP_WARPS = 8
# software pipelining stages of the per-chunk solve kernels (Triton's default on CUDA is 3)
# software pipelining stages of the per-chunk solve kernels (Triton's default on CUDA; 1 gave the same build)
SOLVE_STAGES = 3


@triton.jit
def _scan_fwd_one(kp, wp, g, h0p, hsp, htp, bos, eos, coff, i_n, i_h, rk, c0,
                  H: tl.constexpr, D: tl.constexpr, DW: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                  BW: tl.constexpr,
                  HAS_H0: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Scan of one [BK, BW] tile of the state ``sum_i decay * k_i w_i^T`` (w = k for H, w = v for U)."""
    rkm, rw, rwm, st_off, m2, h = scan_tile_start(h0p, HAS_H0, i_n, i_h, rk, c0, H, D, DW, BK, BW)
    nc = tl.cdiv(eos - bos, C)
    for c in range(nc):
        tl.store(hsp + ((coff + c) * H + i_h).to(tl.int64) * D * DW + st_off, h.to(hsp.dtype.element_ty), mask=m2)
        t = bos + c * C + tl.arange(0, C)
        tm = t < eos
        gc = tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64)
        G = tl.cumsum(gc, axis=0)
        g_last = tl.sum(gc, axis=0)
        kt = tl.load(kp + t[None, :].to(tl.int64) * (H * D) + i_h * D + rk[:, None], mask=tm[None, :] & rkm[:, None],
                     other=0.0).to(tl.float32)  # fmt: skip
        w = load_rows(wp, t, tm, H * DW, i_h * DW, rw, rwm).to(tl.float32)
        w = w * tl.exp((g_last - G).to(tl.float32))[:, None]
        h = h * tl.exp(g_last.to(tl.float32)) + tl.dot(kt, w, input_precision=PREC)
    tl.store(htp + (i_n * H + i_h).to(tl.int64) * D * DW + st_off, h, mask=m2)


@triton.jit
def _scan_fwd_kernel(k, v, g, h0_kk, h0_kv, hs, us, ht_kk, ht_kv, seq_info,
                     H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                     BW: tl.constexpr, NWH: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_k, i_w, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(seq_info + i_n * 3)
    eos = tl.load(seq_info + i_n * 3 + 1)
    coff = tl.load(seq_info + i_n * 3 + 2)
    rk = i_k * BK + tl.arange(0, BK)
    if i_w < NWH:
        _scan_fwd_one(
            k, k, g, h0_kk, hs, ht_kk, bos, eos, coff, i_n, i_h, rk, i_w * BW, H, D, D, C, BK, BW, HAS_H0, PREC
        )
    else:
        _scan_fwd_one(k, v, g, h0_kv, us, ht_kv, bos, eos, coff, i_n, i_h, rk, (i_w - NWH) * BW, H, D, DV, C, BK, BW,
                      HAS_H0, PREC)  # fmt: skip


_scan_fwd_tuned = scan_autotuned(_scan_fwd_kernel)


@triton.jit
def _prep_kernel(k, g, hs, hn, n0o, no, chunk_info,
                 H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, C: tl.constexpr, FLOOR: tl.constexpr,
                 PREC: tl.constexpr):  # fmt: skip
    """Per (chunk, head), ``prep`` variant: the float16 solve operand ``hn = H0 / ||H0||_F`` ([D, D], H0's own
    orientation), ``n0 = ||H0||_F`` and the per-token norms ``||H_t||_F`` (floored) of the chunk.

    It moves everything that needs the float32 state out of the solve kernels: H0 as a [128, 128] float32 tile
    is 128 registers per thread at 4 warps, and in the fused kernel it spilled and raised the register pressure of
    the Chebyshev loop that follows (device run 2: the fused forward solve cost 1.96 ms at num_iter = 0).
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts, te, t, tm, G = chunk_tokens(chunk_info, g, i_c, i_h, H, C)
    base = (i_c * H + i_h).to(tl.int64)
    K = load_tile(k + i_h * D, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
    Hm = load_tile(hs + base * D * D, 0, D, D, D, 1, BD, BD, False)
    n, _ = chunk_norms(K, Hm, G, FLOOR, C, PREC)
    tl.store(no + t * H + i_h, n, mask=tm)
    nn = tl.sqrt(tl.sum(tl.sum(Hm * Hm, axis=1), axis=0))
    tl.store(n0o + base, nn)
    d = tl.arange(0, BD)
    hp = hn + base * D * D + d[:, None] * D + d[None, :]
    tl.store(hp, (Hm * tl.where(nn > 0.0, 1.0 / nn, 0.0)).to(tl.float16), mask=(d < D)[:, None] & (d < D)[None, :])


# Warps tried for the prep kernel on a GPU (pure stores; one (chunk, head) per program, no loop). Device run 3:
# 0.91 ms at T = 8192 for ~0.8 GB of traffic (~0.9 TB/s of the ~4 TB/s the H200 moves). Offline sm_90 build, bf16
# D = 128: 8 warps 235 registers, no spills; 16 warps 128 registers, 68 B spilled; 4 warps spills 624 B (not tried).
PREP_CONFIGS = warp_configs(8, 16)
_prep_tuned = autotuned(_prep_kernel, PREP_CONFIGS, ["H", "D", "PREC"])


@triton.jit(do_not_specialize=["num_iter"])
def _solve_fwd_kernel(q, k, v, g, alpha, hs, us, hn, n0o, o, xo, no, chunk_info, scale, ridge, num_iter,
                      H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                      C: tl.constexpr, FLOOR: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
                      PREP: tl.constexpr):  # fmt: skip
    """Per (chunk, head): norms, Chebyshev solve, alpha mix, readout.

    PREP (``prep`` variant, LOWP only): the float16 operand ``hn [NT, H, D, D]``, ``n0o [NT, H]`` and the norms
    ``no [TT, H]`` come from :func:`_prep_kernel`; the query tile is re-read from memory (it is in L1/L2) inside
    the loop and after it instead of being held (see :func:`chebyshev_lowp`). Otherwise (``fused``, and every fp32
    launch) the kernel computes the norms and operands from the float32 ``hs`` itself and writes ``no``.
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts, te, t, tm, G = chunk_tokens(chunk_info, g, i_c, i_h, H, C)
    eG = tl.exp(G.to(tl.float32))
    base = (i_c * H + i_h).to(tl.int64)
    kp = k + i_h * D
    qp = q + i_h * D
    if PREP:
        n = tl.load(no + t * H + i_h, mask=tm, other=1.0)
        n0 = tl.load(n0o + base)
        # hn^T: rows of X @ hn^T are (H0 x)^T / n0 (a transposed read of a float16 tile, once per program)
        Hop = load_tile(hn + base * D * D, 0, D, D, 1, D, BD, BD, True)
        Kd = load_tile(kp, ts, te, D, H * D, 1, C, BD, False).to(tl.float16)
        M = decay_lower(G, C)
        Q = load_tile(qp, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
        rn = tl.sqrt(tl.sum(Q * Q, axis=1))
        X = chebyshev_lowp(qp, ts, te, H * D, tl.where(rn > 0.0, 1.0 / rn, 0.0), Hop, Kd, M, eG * n0, n, ridge,
                           num_iter, D, C, BD) * (rn / n)[:, None]  # fmt: skip
        # q re-read rather than held across the loop (64 registers per thread in float32)
        Q = load_tile(qp, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
    else:
        K = load_tile(kp, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
        # H0^T so that rows of X @ H0^T are (H0 x)^T
        Ht = load_tile(hs + base * D * D, 0, D, D, 1, D, BD, BD, True)
        n, _ = chunk_norms(K, Ht, G, FLOOR, C, PREC)
        Hop, Kd, n0 = solve_operands(Ht, K, LOWP)
        M = decay_lower(G, C)
        Q = load_tile(qp, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
        X = chebyshev(Q, Hop, Kd, M, eG * n0, n, ridge, num_iter, LOWP, PREC)
    a = tl.load(alpha + t * H + i_h, mask=tm, other=0.0).to(tl.float32)
    Qt = Q + a[:, None] * (X - Q)
    U0 = load_tile(us + base * D * DV, 0, D, DV, DV, 1, BD, BDV, False)
    V = load_tile(v + i_h * DV, ts, te, DV, H * DV, 1, C, BDV, False)
    Kd = load_tile(kp, ts, te, D, H * D, 1, C, BD, False)  # readout in the input dtype
    if LOWP:
        Qtd = Qt.to(k.dtype.element_ty)
    else:
        Qtd = Qt
    out = tl.dot(Qtd, U0, input_precision=PREC) * eG[:, None]
    S = tl.dot(Qtd, tl.trans(Kd), input_precision=PREC) * M
    out = tl.dot(S.to(V.dtype), V, acc=out, input_precision=PREC)
    d = tl.arange(0, BD)
    e = tl.arange(0, BDV)
    row = t[:, None].to(tl.int64) * H + i_h
    tl.store(o + row * DV + e[None, :], (out * scale).to(o.dtype.element_ty), mask=tm[:, None] & (e < DV)[None, :])
    tl.store(xo + row * D + d[None, :], X, mask=tm[:, None] & (d < D)[None, :])
    if not PREP:
        tl.store(no + t * H + i_h, n, mask=tm)


def dot_precision(dtype: torch.dtype) -> tuple[bool, str]:
    """(LOWP, PREC): bf16/fp16 inputs use tensor cores on their own dtype and tf32 for fp32-operand dots;
    fp32 inputs use full fp32 ('ieee') everywhere."""
    if dtype in (torch.bfloat16, torch.float16):
        return True, "tf32"
    return False, "ieee"


def num_warps_for(bd: int, lowp: bool) -> int:
    """Warps for the per-chunk kernels. Their dots are chained, for which Triton gives each warpgroup 64 whole
    rows: with C = 64 rows, 8 warps would only duplicate work, so bf16/fp16 use 4. The fp32 ('ieee', no tensor
    cores) variants use 8 at D = 128: at 4, ptxas spilled them into >20 KB of stack."""
    return 8 if (bd >= 128 and not lowp) else 4


def scan_fwd(k, v, g, h0, idx, *, BK=64, BW=64, force_tiles=False):
    """Chunk-initial states (H float32; U in the input dtype for bf16/fp16 inputs, else float32) and final states
    (float32). Returns ``(hs [NT,H,D,D], us [NT,H,D,Dv], ht_kk, ht_kv)``. On a GPU the tiles are autotuned;
    ``force_tiles`` launches the plain kernel with ``BK`` x ``BW`` tiles instead (tests)."""
    _, H, D = k.shape
    DV = v.shape[-1]
    N, NT = idx.num_seqs, idx.num_chunks
    lowp, prec = dot_precision(k.dtype)
    # H_[c] float32 (norms and the normalised float16 solve operand are taken from it); U_[c] in the readout's
    # dot dtype (bf16/fp16 inputs: the readout only reads it rounded to that)
    hs = k.new_empty(NT, H, D, D, dtype=torch.float32)
    us = k.new_empty(NT, H, D, DV, dtype=k.dtype if lowp else torch.float32)
    ht_kk = k.new_empty(N, H, D, D, dtype=torch.float32)
    ht_kv = k.new_empty(N, H, D, DV, dtype=torch.float32)
    has_h0 = h0 is not None
    h0_kk, h0_kv = (h0[0].contiguous().float(), h0[1].contiguous().float()) if has_h0 else (ht_kk, ht_kv)
    kernel, grid, launch = scan_launch(_scan_fwd_kernel, _scan_fwd_tuned, k, D, DV, N * H, BK, BW, force_tiles)
    kernel[grid](
        k, v, g, h0_kk, h0_kv, hs, us, ht_kk, ht_kv, idx.seq_info,
        H=H, D=D, DV=DV, C=CHUNK, HAS_H0=has_h0, PREC=prec, **launch,
    )  # fmt: skip
    return hs, us, ht_kk, ht_kv


def use_prep(variant: str, dtype: torch.dtype) -> bool:
    """Whether ``variant`` runs the prep path for inputs of ``dtype`` (bf16/fp16 only; see VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"gka: variant must be one of {VARIANTS}, got {variant!r}")
    return variant in ("prep", "prep_fwd") and dot_precision(dtype)[0]


def backward_uses_prep(variant: str) -> bool:
    """Whether the adjoint solve of ``variant`` reads the forward's float16 operands (only ``prep`` does)."""
    return variant == "prep"


def prep_fwd(k, g, hs, idx):
    """``prep`` launch. Returns ``(hn [NT,H,D,D] float16 = H0/||H0||_F, n0 [NT,H] float32, norms [TT,H] float32)``."""
    TT, H, D = k.shape
    _, prec = dot_precision(k.dtype)
    hn = k.new_empty(idx.num_chunks, H, D, D, dtype=torch.float16)
    n0 = k.new_empty(idx.num_chunks, H, dtype=torch.float32)
    n = k.new_empty(TT, H, dtype=torch.float32)
    BD = max(16, triton.next_power_of_2(D))
    kernel, launch = pick_launch(_prep_kernel, _prep_tuned, k, PREP_WARPS)
    kernel[(idx.num_chunks, H)](
        k, g, hs, hn, n0, n, idx.chunk_info, H=H, D=D, BD=BD, C=CHUNK, FLOOR=NORM_FLOOR, PREC=prec, **launch,
    )  # fmt: skip
    return hn, n0, n


def solve_fwd(q, k, v, g, alpha, hs, us, idx, *, num_iter, ridge, scale, prep=None):
    """Solve + readout. ``prep``: the output of :func:`prep_fwd` (the ``prep`` variant) or None (``fused``).
    Returns ``(o [TT,H,Dv] in v's dtype, x [TT,H,D] float32, norms [TT,H] float32)``; with ``prep`` the norms are
    prep's tensor."""
    TT, H, D = q.shape
    DV = v.shape[-1]
    lowp, prec = dot_precision(q.dtype)
    if prep is not None and not lowp:
        raise ValueError("gka: the prep variant is for bf16/fp16 inputs only")
    o = torch.empty_like(v)
    x = q.new_empty(TT, H, D, dtype=torch.float32)
    if prep is None:
        hn, n0, n = hs, hs, q.new_empty(TT, H, dtype=torch.float32)  # hn / n0 unused by the fused code
    else:
        hn, n0, n = prep
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    _solve_fwd_kernel[(idx.num_chunks, H)](
        q, k, v, g, alpha, hs, us, hn, n0, o, x, n, idx.chunk_info, float(scale), float(ridge), int(num_iter),
        H=H, D=D, DV=DV, BD=BD, BDV=BDV, C=CHUNK, FLOOR=NORM_FLOOR, LOWP=lowp, PREC=prec, PREP=prep is not None,
        num_warps=num_warps_for(max(BD, BDV), lowp), num_stages=SOLVE_STAGES,
    )  # fmt: skip
    return o, x, n
