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
from .solve import chebyshev, chunk_norms, decay_lower, load_rows, load_tile, solve_operands

CHUNK = 64


@triton.jit
def _scan_fwd_one(kp, wp, g, h0p, hsp, htp, bos, eos, coff, i_n, i_h, rk, c0,
                  H: tl.constexpr, D: tl.constexpr, DW: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                  BW: tl.constexpr,
                  HAS_H0: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Scan of one [BK, BW] tile of the state ``sum_i decay * k_i w_i^T`` (w = k for H, w = v for U)."""
    rkm = rk < D
    rw = c0 + tl.arange(0, BW)
    rwm = rw < DW
    st_off = rk[:, None] * DW + rw[None, :]
    m2 = rkm[:, None] & rwm[None, :]
    h = tl.zeros([BK, BW], dtype=tl.float32)
    if HAS_H0:
        h += tl.load(h0p + (i_n * H + i_h).to(tl.int64) * D * DW + st_off, mask=m2, other=0.0)
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


@triton.jit(do_not_specialize=["num_iter"])
def _solve_fwd_kernel(q, k, v, g, alpha, hs, us, o, xo, no, chunk_info, scale, ridge, num_iter,
                      H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                      C: tl.constexpr, FLOOR: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts = tl.load(chunk_info + 2 * i_c)
    te = tl.load(chunk_info + 2 * i_c + 1)
    t = ts + tl.arange(0, C)
    tm = t < te
    G = tl.cumsum(tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64), axis=0)
    eG = tl.exp(G.to(tl.float32))
    base = (i_c * H + i_h).to(tl.int64)
    kp = k + i_h * D
    K = load_tile(kp, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
    # H0^T so that rows of X @ H0^T are (H0 x)^T
    Ht = load_tile(hs + base * D * D, 0, D, D, 1, D, BD, BD, True)
    n, _ = chunk_norms(K, Ht, G, FLOOR, C, PREC)
    Hop, Kd, n0 = solve_operands(Ht, K, LOWP)
    M = decay_lower(G, C)
    Q = load_tile(q + i_h * D, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
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


def scan_fwd(k, v, g, h0, idx, *, BK=64, BW=64):
    """Chunk-initial states (H float32; U in the input dtype for bf16/fp16 inputs, else float32) and final states
    (float32). Returns ``(hs [NT,H,D,D], us [NT,H,D,Dv], ht_kk, ht_kv)``."""
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
    BK = min(BK, triton.next_power_of_2(D))
    BW = min(BW, triton.next_power_of_2(min(D, DV)))
    nwh = triton.cdiv(D, BW)
    grid = (triton.cdiv(D, BK), nwh + triton.cdiv(DV, BW), N * H)
    has_h0 = h0 is not None
    h0_kk, h0_kv = (h0[0].contiguous().float(), h0[1].contiguous().float()) if has_h0 else (ht_kk, ht_kv)
    _scan_fwd_kernel[grid](
        k, v, g, h0_kk, h0_kv, hs, us, ht_kk, ht_kv, idx.seq_info,
        H=H, D=D, DV=DV, C=CHUNK, BK=BK, BW=BW, NWH=nwh, HAS_H0=has_h0, PREC=prec, num_warps=4,
    )  # fmt: skip
    return hs, us, ht_kk, ht_kv


def solve_fwd(q, k, v, g, alpha, hs, us, idx, *, num_iter, ridge, scale):
    """Solve + readout. Returns ``(o [TT,H,Dv] in v's dtype, x [TT,H,D] float32, norms [TT,H] float32)``."""
    TT, H, D = q.shape
    DV = v.shape[-1]
    lowp, prec = dot_precision(q.dtype)
    o = torch.empty_like(v)
    x = q.new_empty(TT, H, D, dtype=torch.float32)
    n = q.new_empty(TT, H, dtype=torch.float32)
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    _solve_fwd_kernel[(idx.num_chunks, H)](
        q, k, v, g, alpha, hs, us, o, x, n, idx.chunk_info, float(scale), float(ridge), int(num_iter),
        H=H, D=D, DV=DV, BD=BD, BDV=BDV, C=CHUNK, FLOOR=NORM_FLOOR, LOWP=lowp, PREC=prec,
        num_warps=num_warps_for(max(BD, BDV), lowp),
    )  # fmt: skip
    return o, x, n
