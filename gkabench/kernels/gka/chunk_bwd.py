"""Backward Triton kernels of chunked GKA: implicit differentiation (gka-spec.md section 4).

Per token, with x the forward solution, ``qt = q + alpha (x - q)`` and ``o = scale U_t^T qt``::

    dqt    = scale U_t do                            (readout)
    dalpha = dqt . (x - q),   dx = alpha dqt,   dq = (1 - alpha) dqt + y
    y      = (H_t + lam_t I)^{-T} dx                  the same Chebyshev solver and norms as the forward
    L_t    = -y x^T + beta_t H_t,  beta_t = -ridge (x . y) / ||H_t||   local gradient w.r.t. H_t (0 if floored)

``L_t`` flows back through ``H_t = gamma_t H_{t-1} + k_t k_t^T``. Three launches:

1. ``_solve_bwd_kernel`` (chunk, head): dqt, dalpha, dq, y, beta and the token-local part of dg.
2. ``_scan_bwd_kernel`` (row tile, column tile, sequence x head): reverse scan over chunks of the state
   gradients ``dH_[c]``, ``dU_[c]`` (w.r.t. the chunk-initial states). The ``beta H_t`` part summed over a chunk is
   ``sigma H_[c] + sum_i tau_i k_i k_i^T``, with ``tau_i = sum_{j>=i} e^{2G_j - G_i} beta_j`` and
   ``sigma = sum_j e^{2G_j} beta_j``.
3. ``_grads_u_kernel`` then ``_grads_h_kernel`` (chunk, head): dk, dv and the remaining part of dg (split in
   two so each fits the 227 KB of shared memory).

The log-decay gradient uses ``dg_t = sum_{s >= t} e_s`` with
``e_s = <L_s, H_s> + qt_s . dqt_s - k_s^T T_s k_s - k_s^T TU_s v_s`` (T, TU the total gradients w.r.t. H_s, U_s),
which follows from ``dg_t = gamma_t <T_t, H_{t-1}> + gamma_t <TU_t, U_{t-1}>``; the reverse cumsum runs in float64
in PyTorch. ``e`` of a sequence's last token also gets ``<dH_final, H_final> + <dU_final, U_final>``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_fwd import (
    CHUNK,
    SOLVE_STAGES,
    autotuned,
    dot_precision,
    num_warps_for,
    scan_autotuned,
    pick_launch,
    scan_launch,
    warp_configs,
)
from .common import NORM_FLOOR
from .solve import (
    apply_h,
    beta_suffix,
    chebyshev,
    chebyshev_lowp,
    chunk_tokens,
    decay_lower,
    decay_upper,
    load_rows,
    load_tile,
    scan_tile_start,
    solve_operands,
)


@triton.jit(do_not_specialize=["num_iter"])
def _solve_bwd_kernel(q, k, v, g, alpha, hs, us, xo, no, do, dq, dalpha, yo, betao, eo, tauo, sigmao, chunk_info,
                      scale, ridge,
                      num_iter, hn, n0o, rbuf, H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
                      BDV: tl.constexpr, C: tl.constexpr, FLOOR: tl.constexpr, LOWP: tl.constexpr,
                      PREC: tl.constexpr, PREP: tl.constexpr):  # fmt: skip
    """Per (chunk, head): readout gradient, adjoint solve, dq, dalpha, beta, e, tau, sigma.

    PREP (``prep`` variant, LOWP only): the float16 operand ``hn = H0 / ||H0||`` and ``n0o = ||H0||`` of the
    forward's prep launch replace the float32 state; the unit-norm rhs ``a dqt / |a dqt|`` is parked in float16 in
    the scratch ``rbuf [TT, H, D]`` (the float16 rounding the fused loop applies to its held rhs) and re-read by
    the adjoint Chebyshev loop (:func:`chebyshev_lowp`), and dqt in float32 in ``yo`` (overwritten by y at the
    end), re-read after the loop: dqt and the partial dq are [C, D] float32 tiles, 64 registers per thread each,
    that the fused kernel held across the loop.
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts, te, t, tm, G = chunk_tokens(chunk_info, g, i_c, i_h, H, C)
    eG = tl.exp(G.to(tl.float32))
    M = decay_lower(G, C)
    base = (i_c * H + i_h).to(tl.int64)
    kp = k + i_h * D
    V = load_tile(v + i_h * DV, ts, te, DV, H * DV, 1, C, BDV, False)
    dO = load_tile(do + i_h * DV, ts, te, DV, H * DV, 1, C, BDV, False)
    # U0^T [Dv, D] so that dO @ U0^T gives rows (U0 do)^T.
    U0t = load_tile(us + base * D * DV, 0, DV, D, 1, DV, BDV, BD, True)
    Kb = load_tile(kp, ts, te, D, H * D, 1, C, BD, False)
    if not LOWP:
        V = V.to(tl.float32)
        dO = dO.to(tl.float32)
        Kb = Kb.to(tl.float32)
    S = tl.dot(dO, tl.trans(V), input_precision=PREC) * M
    dqt = tl.dot(dO, U0t, input_precision=PREC) * eG[:, None]
    dqt = tl.dot(S.to(Kb.dtype), Kb, acc=dqt, input_precision=PREC) * scale
    Q = load_tile(q + i_h * D, ts, te, D, H * D, 1, C, BD, False).to(tl.float32)
    X = load_tile(xo + i_h * D, ts, te, D, H * D, 1, C, BD, False)
    a = tl.load(alpha + t * H + i_h, mask=tm, other=0.0).to(tl.float32)
    n = tl.load(no + t * H + i_h, mask=tm, other=1.0)
    da = tl.sum(dqt * (X - Q), axis=1)
    Qt = Q + a[:, None] * (X - Q)
    e_part = tl.sum(Qt * dqt, axis=1)
    d = tl.arange(0, BD)
    row = t[:, None].to(tl.int64) * H + i_h
    m2 = tm[:, None] & (d < D)[None, :]
    if PREP:
        Hop = load_tile(hn + base * D * D, 0, D, D, D, 1, BD, BD, False)
        n0 = tl.load(n0o + base)
        Kd = Kb.to(tl.float16)
        # rhs a dqt: unit rows are dqt / |dqt| where a > 0 (rn = a |dqt|), zero rows where a = 0
        rn = a * tl.sqrt(tl.sum(dqt * dqt, axis=1))
        tl.store(yo + row * D + d[None, :], dqt, mask=m2)
        runit = dqt * tl.where(rn > 0.0, a / rn, 0.0)[:, None]
        tl.store(rbuf + row * D + d[None, :], runit.to(tl.float16), mask=m2)
        tl.debug_barrier()  # the loop re-reads the rhs in another thread layout
        Y = chebyshev_lowp(rbuf + i_h * D, ts, te, H * D, tl.where(rn > 0.0, 1.0, 0.0), Hop, Kd, M, eG * n0, n,
                           ridge, num_iter, D, C, BD) * (rn / n)[:, None]  # fmt: skip
        dqt = load_tile(yo + i_h * D, ts, te, D, H * D, 1, C, BD, False)
        dQ = (1.0 - a)[:, None] * dqt + Y
        tl.debug_barrier()  # every thread has read dqt before y overwrites it
    else:
        dQ = (1.0 - a)[:, None] * dqt
        # H0 as stored (not transposed): the adjoint solve applies A^T, whose rows are (H0^T y)^T = y^T H0.
        Hm = load_tile(hs + base * D * D, 0, D, D, D, 1, BD, BD, False)
        Hop, Kd, n0 = solve_operands(Hm, Kb.to(tl.float32), LOWP)
        Y = chebyshev(a[:, None] * dqt, Hop, Kd, M, eG * n0, n, ridge, num_iter, LOWP, PREC)
        dQ += Y
    tl.store(dq + row * D + d[None, :], dQ.to(dq.dtype.element_ty), mask=m2)
    tl.store(yo + row * D + d[None, :], Y, mask=m2)
    X = load_tile(xo + i_h * D, ts, te, D, H * D, 1, C, BD, False)
    # rows (H_t^T x_t)^T: y . (H_t^T x) = x^T H_t y. x ~ |q| / n: scaled by n to O(1) for the float16 dots.
    if LOWP:
        Ml = M.to(Kd.dtype)
    else:
        Ml = M
    hx = apply_h(X * n[:, None], Hop, Kd, Ml, eG * n0, LOWP, PREC) / n[:, None]
    xy = tl.sum(X * Y, axis=1)
    beta = tl.where(n > FLOOR, -ridge * xy / n, 0.0)
    # <L, H_t> = -y^T H_t x + beta ||H_t||^2 (H_t symmetric for every state the op builds)
    e_part += beta * n * n - tl.sum(Y * hx, axis=1)
    tl.store(dalpha + t * H + i_h, da, mask=tm)
    tl.store(betao + t * H + i_h, beta, mask=tm)
    tl.store(eo + t * H + i_h, e_part, mask=tm)
    # the chunk sums of beta_t H_t that the reverse state scan needs: tau_i (per token) and sigma (per chunk)
    tl.store(tauo + t * H + i_h, eG * beta_suffix(beta, G, C), mask=tm)
    tl.store(sigmao + i_c * H + i_h, tl.sum(eG * eG * beta, axis=0))


@triton.jit
def _scan_bwd_dh(k, xo, yo, g, tauo, sigmao, hs, dht, dhs, dh0, bos, eos, coff, i_n, i_h, rk,
                 H: tl.constexpr, D: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BW: tl.constexpr, c0,
                 HAS_DHT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Reverse scan of one [BK, BW] tile of dH_[c]:
    ``dH_[c] = e^{G_last} dH_[c+1] - (e^G y)^T X + (tau k)^T K + sigma H_[c]``."""
    rkm, rw, rwm, st_off, m2, h = scan_tile_start(dht, HAS_DHT, i_n, i_h, rk, c0, H, D, D, BK, BW)
    nc = tl.cdiv(eos - bos, C)
    for cc in range(nc):
        c = nc - 1 - cc
        sbase = ((coff + c) * H + i_h).to(tl.int64) * D * D
        tl.store(dhs + sbase + st_off, h, mask=m2)
        t = bos + c * C + tl.arange(0, C)
        tm = t < eos
        gc = tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64)
        G = tl.cumsum(gc, axis=0)
        eG = tl.exp(G.to(tl.float32))
        tau = tl.load(tauo + t * H + i_h, mask=tm, other=0.0)
        sigma = tl.load(sigmao + (coff + c) * H + i_h)
        rowsT = t[None, :].to(tl.int64) * (H * D) + i_h * D + rk[:, None]
        mT = tm[None, :] & rkm[:, None]
        yt = tl.load(yo + rowsT, mask=mT, other=0.0) * (-eG)[None, :]
        kt = tl.load(k + rowsT, mask=mT, other=0.0).to(tl.float32) * tau[None, :]
        xc = load_rows(xo, t, tm, H * D, i_h * D, rw, rwm)
        kc = load_rows(k, t, tm, H * D, i_h * D, rw, rwm).to(tl.float32)
        hc = tl.load(hs + sbase + st_off, mask=m2, other=0.0).to(tl.float32)
        h = h * tl.exp(tl.sum(gc, axis=0).to(tl.float32)) + sigma * hc
        h = tl.dot(yt, xc, acc=h, input_precision=PREC)
        h = tl.dot(kt, kc, acc=h, input_precision=PREC)
    tl.store(dh0 + (i_n * H + i_h).to(tl.int64) * D * D + st_off, h, mask=m2)


@triton.jit
def _scan_bwd_du(q, xo, alpha, g, do, dut, dus, du0, scale, bos, eos, coff, i_n, i_h, rk,
                 H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                 BW: tl.constexpr, c0, HAS_DHT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Reverse scan of one [BK, BW] tile of dU_[c]: ``dU_[c] = e^{G_last} dU_[c+1] + scale (e^G qt)^T dO``."""
    rkm, rw, rwm, st_off, m2, h = scan_tile_start(dut, HAS_DHT, i_n, i_h, rk, c0, H, D, DV, BK, BW)
    nc = tl.cdiv(eos - bos, C)
    for cc in range(nc):
        c = nc - 1 - cc
        tl.store(dus + ((coff + c) * H + i_h).to(tl.int64) * D * DV + st_off, h, mask=m2)
        t = bos + c * C + tl.arange(0, C)
        tm = t < eos
        gc = tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64)
        G = tl.cumsum(gc, axis=0)
        a = tl.load(alpha + t * H + i_h, mask=tm, other=0.0).to(tl.float32)
        rowsT = t[None, :].to(tl.int64) * (H * D) + i_h * D + rk[:, None]
        mT = tm[None, :] & rkm[:, None]
        qt = tl.load(q + rowsT, mask=mT, other=0.0).to(tl.float32)
        qt = qt + a[None, :] * (tl.load(xo + rowsT, mask=mT, other=0.0) - qt)
        qt = qt * (tl.exp(G.to(tl.float32)) * scale)[None, :]
        doc = load_rows(do, t, tm, H * DV, i_h * DV, rw, rwm).to(tl.float32)
        h = tl.dot(qt, doc, acc=h * tl.exp(tl.sum(gc, axis=0).to(tl.float32)), input_precision=PREC)
    tl.store(du0 + (i_n * H + i_h).to(tl.int64) * D * DV + st_off, h, mask=m2)


@triton.jit
def _scan_bwd_kernel(q, k, xo, yo, alpha, g, tauo, sigmao, hs, do, dht, dut, dhs, dus, dh0, du0, seq_info, scale,
                     H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                     BW: tl.constexpr, NWH: tl.constexpr, HAS_DHT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_k, i_w, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(seq_info + i_n * 3)
    eos = tl.load(seq_info + i_n * 3 + 1)
    coff = tl.load(seq_info + i_n * 3 + 2)
    rk = i_k * BK + tl.arange(0, BK)
    if i_w < NWH:
        _scan_bwd_dh(k, xo, yo, g, tauo, sigmao, hs, dht, dhs, dh0, bos, eos, coff, i_n, i_h, rk, H, D, C, BK, BW,
                     i_w * BW,
                     HAS_DHT, PREC)  # fmt: skip
    else:
        _scan_bwd_du(q, xo, alpha, g, do, dut, dus, du0, scale, bos, eos, coff, i_n, i_h, rk, H, D, DV, C, BK, BW,
                     (i_w - NWH) * BW, HAS_DHT, PREC)  # fmt: skip


_scan_bwd_tuned = scan_autotuned(_scan_bwd_kernel)


@triton.jit
def _grads_u_kernel(q, k, v, g, alpha, xo, do, dus, eo, dk32, dv, chunk_info, scale,
                    H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                    C: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Readout (U) part of launch 3: dv, dk through U (to the float32 scratch dk32), and ``-k.dk_U`` into e."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts = tl.load(chunk_info + 2 * i_c)
    te = tl.load(chunk_info + 2 * i_c + 1)
    t = ts + tl.arange(0, C)
    tm = t < te
    d = tl.arange(0, BD)
    dm = d < D
    e = tl.arange(0, BDV)
    em = e < DV
    gc = tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64)
    G = tl.cumsum(gc, axis=0)
    eGl = tl.exp((tl.sum(gc, axis=0) - G).to(tl.float32))  # decay from token i to the chunk end
    Mt = decay_upper(G, C) * scale  # [i, j] = scale e^{G_j - G_i}, j >= i
    base = (i_c * H + i_h).to(tl.int64)
    K = load_rows(k, t, tm, H * D, i_h * D, d, dm).to(tl.float32)
    Q = load_rows(q, t, tm, H * D, i_h * D, d, dm).to(tl.float32)
    X = load_rows(xo, t, tm, H * D, i_h * D, d, dm)
    a = tl.load(alpha + t * H + i_h, mask=tm, other=0.0).to(tl.float32)
    Qt = Q + a[:, None] * (X - Q)
    dO = load_rows(do, t, tm, H * DV, i_h * DV, e, em).to(tl.float32)
    du_a = tl.load(dus + base * D * DV + d[:, None] * DV + e[None, :], mask=dm[:, None] & em[None, :], other=0.0)
    dv_ = tl.dot(K, du_a, input_precision=PREC) * eGl[:, None]
    P = tl.dot(K, tl.trans(Qt), input_precision=PREC) * Mt
    dv_ = tl.dot(P, dO, acc=dv_, input_precision=PREC)
    row = t[:, None].to(tl.int64) * H + i_h
    tl.store(dv + row * DV + e[None, :], dv_.to(dv.dtype.element_ty), mask=tm[:, None] & em[None, :])
    V = load_rows(v, t, tm, H * DV, i_h * DV, e, em).to(tl.float32)
    du_at = tl.load(dus + base * D * DV + d[None, :] * DV + e[:, None], mask=em[:, None] & dm[None, :], other=0.0)
    dkU = tl.dot(V, du_at, input_precision=PREC) * eGl[:, None]
    P = tl.dot(V, tl.trans(dO), input_precision=PREC) * Mt
    dkU = tl.dot(P, Qt, acc=dkU, input_precision=PREC)
    tl.store(dk32 + row * D + d[None, :], dkU, mask=tm[:, None] & dm[None, :])
    e_ = tl.load(eo + t * H + i_h, mask=tm, other=0.0) - tl.sum(K * dkU, axis=1)
    tl.store(eo + t * H + i_h, e_, mask=tm)


@triton.jit
def _grads_h_kernel(k, g, hs, xo, yo, betao, dhs, eo, dk32, dk, chunk_info,
                    H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, C: tl.constexpr, LOWP: tl.constexpr,
                    PREC: tl.constexpr):  # fmt: skip
    """Solve (H) part of launch 3: dk through H (added to dk32, written to dk) and ``-k.dk_H / 2`` into e."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    ts = tl.load(chunk_info + 2 * i_c)
    te = tl.load(chunk_info + 2 * i_c + 1)
    t = ts + tl.arange(0, C)
    tm = t < te
    d = tl.arange(0, BD)
    dm = d < D
    gc = tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64)
    G = tl.cumsum(gc, axis=0)
    eGl = tl.exp((tl.sum(gc, axis=0) - G).to(tl.float32))
    base = (i_c * H + i_h).to(tl.int64)
    K = load_rows(k, t, tm, H * D, i_h * D, d, dm).to(tl.float32)
    mDD = dm[:, None] & dm[None, :]
    # (dH_a + dH_a^T) k_i e^{G_last - G_i}: the total gradient of the next chunk's initial state, decayed to token i
    sym = tl.load(dhs + base * D * D + d[:, None] * D + d[None, :], mask=mDD, other=0.0)
    sym += tl.load(dhs + base * D * D + d[None, :] * D + d[:, None], mask=mDD, other=0.0)
    if LOWP:
        # operands rounded to the input dtype: halves the shared memory of these two D x D operands
        Kd = K.to(k.dtype.element_ty)
        sym = sym.to(k.dtype.element_ty)
    else:
        Kd = K
    dkH = tl.dot(Kd, sym, input_precision=PREC) * eGl[:, None]
    beta = tl.load(betao + t * H + i_h, mask=tm, other=0.0)
    bs = beta_suffix(beta, G, C)
    tau = tl.exp(G.to(tl.float32)) * bs
    hsym = tl.load(hs + base * D * D + d[:, None] * D + d[None, :], mask=mDD, other=0.0).to(tl.float32)
    hsym += tl.load(hs + base * D * D + d[None, :] * D + d[:, None], mask=mDD, other=0.0).to(tl.float32)
    if LOWP:
        hsym = hsym.to(k.dtype.element_ty)
    dkH += tl.dot(Kd, hsym, input_precision=PREC) * tau[:, None]
    Mt = decay_upper(G, C)  # [i, j] = e^{G_j - G_i}, j >= i
    X = load_rows(xo, t, tm, H * D, i_h * D, d, dm)
    Y = load_rows(yo, t, tm, H * D, i_h * D, d, dm)
    P = tl.dot(K, tl.trans(X), input_precision=PREC) * Mt
    dkH = tl.dot(-P, Y, acc=dkH, input_precision=PREC)
    P = tl.dot(K, tl.trans(Y), input_precision=PREC) * Mt
    dkH = tl.dot(-P, X, acc=dkH, input_precision=PREC)
    # beta H_j terms inside the chunk: 2 sum_l (k_i.k_l) R[i,l] k_l, R[i,l] = bs[m] e^{2 G_m - G_i - G_l},
    # m = max(i, l); a full (not triangular) matrix.
    r = tl.arange(0, C)
    ge = r[:, None] >= r[None, :]
    Gm = tl.where(ge, G[:, None], G[None, :])
    Bm = tl.where(ge, bs[:, None], bs[None, :])
    R = Bm * tl.exp(((Gm - G[:, None]) + (Gm - G[None, :])).to(tl.float32))
    gram = tl.dot(K, tl.trans(K), input_precision=PREC)
    dkH = tl.dot(2.0 * gram * R, K, acc=dkH, input_precision=PREC)
    row = t[:, None].to(tl.int64) * H + i_h
    m2 = tm[:, None] & dm[None, :]
    e_ = tl.load(eo + t * H + i_h, mask=tm, other=0.0) - 0.5 * tl.sum(K * dkH, axis=1)
    tl.store(eo + t * H + i_h, e_, mask=tm)
    dk_ = tl.load(dk32 + row * D + d[None, :], mask=m2, other=0.0) + dkH
    tl.store(dk + row * D + d[None, :], dk_.to(dk.dtype.element_ty), mask=m2)


def solve_bwd(q, k, v, g, alpha, hs, us, x, n, do, idx, *, num_iter, ridge, scale, prep=None):
    """Launch 1. ``prep``: ``(hn, n0)`` of the forward's :func:`prep_fwd` (``prep`` variant) or None (``fused``).
    Returns ``(dq, dalpha [TT,H] f32, y [TT,H,D] f32, beta [TT,H] f32, e [TT,H] f32, tau [TT,H] f32,
    sigma [NT,H] f32)``."""
    TT, H, D = q.shape
    DV = v.shape[-1]
    lowp, prec = dot_precision(q.dtype)
    dq = torch.empty_like(q)
    y = torch.empty_like(x)
    da, beta, e, tau = (q.new_empty(TT, H, dtype=torch.float32) for _ in range(4))
    sigma = q.new_empty(idx.num_chunks, H, dtype=torch.float32)
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    if prep is not None and not lowp:
        raise ValueError("gka: the prep variant is for bf16/fp16 inputs only")
    # unused by the fused code; prep: float16 scratch for the adjoint solve's rhs (transient, TT*H*D*2 bytes)
    hn, n0, rbuf = (hs, sigma, dq) if prep is None else (*prep, q.new_empty(TT, H, D, dtype=torch.float16))
    _solve_bwd_kernel[(idx.num_chunks, H)](
        q, k, v, g, alpha, hs, us, x, n, do, dq, da, y, beta, e, tau, sigma, idx.chunk_info, float(scale), float(ridge),
        int(num_iter), hn, n0, rbuf, H=H, D=D, DV=DV, BD=BD, BDV=BDV, C=CHUNK, FLOOR=NORM_FLOOR, LOWP=lowp, PREC=prec,
        PREP=prep is not None, num_warps=num_warps_for(max(BD, BDV), lowp), num_stages=SOLVE_STAGES,
    )  # fmt: skip
    return dq, da, y, beta, e, tau, sigma


def scan_bwd(q, k, x, y, alpha, g, tau, sigma, hs, do, dht, idx, *, scale, BK=64, BW=64, force_tiles=False):
    """Launch 2. Returns ``(dhs, dus, dh0, du0)``: gradients w.r.t. each chunk's final state (= the next chunk's
    initial state) ``[NT, H, D, D]`` / ``[NT, H, D, Dv]`` and w.r.t. the initial states ``[N, H, ...]``. Tiles as
    :func:`scan_fwd` (autotuned on a GPU unless ``force_tiles``)."""
    _, H, D = q.shape
    DV = do.shape[-1]
    N, NT = idx.num_seqs, idx.num_chunks
    _, prec = dot_precision(q.dtype)
    dhs = q.new_empty(NT, H, D, D, dtype=torch.float32)
    dus = q.new_empty(NT, H, D, DV, dtype=torch.float32)
    dh0 = q.new_empty(N, H, D, D, dtype=torch.float32)
    du0 = q.new_empty(N, H, D, DV, dtype=torch.float32)
    has_dht = dht is not None
    dht_kk, dht_kv = (dht[0].contiguous().float(), dht[1].contiguous().float()) if has_dht else (dh0, du0)
    kernel, grid, launch = scan_launch(_scan_bwd_kernel, _scan_bwd_tuned, q, D, DV, N * H, BK, BW, force_tiles)
    kernel[grid](
        q, k, x, y, alpha, g, tau, sigma, hs, do, dht_kk, dht_kv, dhs, dus, dh0, du0, idx.seq_info, float(scale),
        H=H, D=D, DV=DV, C=CHUNK, HAS_DHT=has_dht, PREC=prec, **launch,
    )  # fmt: skip
    return dhs, dus, dh0, du0


# Warps tried for the two grads kernels on a GPU (one chunk per program, no loop: pipelining stages do not
# matter). Offline sm_90 build (scripts/compile_stats_sm90.py), bf16, D = Dv = 128: at 4 warps both sit at 255
# registers with 404 B (grads_u) and 1356 B (grads_h) of spill stores and 192 KB of shared memory; at 8 warps
# grads_u spills 4 B and grads_h 648 B (their chained dots give each warpgroup the same 64 rows, so 8 warps also
# duplicate some work: only a measurement can say which wins); 16 warps cap registers at 128 and spill more.
# Device run 3: grads_h 2.62 ms, grads_u 1.48 ms at T = 8192. ``eo`` is updated in place, so it is restored
# between the tuning runs.
GRADS_CONFIGS = warp_configs(4, 8)
_grads_u_tuned = autotuned(_grads_u_kernel, GRADS_CONFIGS, ["H", "D", "DV", "PREC"], restore_value=["eo"])
_grads_h_tuned = autotuned(_grads_h_kernel, GRADS_CONFIGS, ["H", "D", "LOWP", "PREC"], restore_value=["eo"])


def grads_bwd(q, k, v, g, alpha, hs, x, y, beta, do, dhs, dus, e, idx, *, scale):
    """Launch 3 (two kernels). Returns ``(dk, dv)``; completes ``e`` in place."""
    _, H, D = q.shape
    DV = v.shape[-1]
    lowp, prec = dot_precision(q.dtype)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dk32 = torch.empty_like(x)
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    nw = num_warps_for(max(BD, BDV), lowp)  # the plain kernels' warps (interpreter); a GPU autotunes them
    kernel, launch = pick_launch(_grads_u_kernel, _grads_u_tuned, q, nw)
    kernel[(idx.num_chunks, H)](
        q, k, v, g, alpha, x, do, dus, e, dk32, dv, idx.chunk_info, float(scale),
        H=H, D=D, DV=DV, BD=BD, BDV=BDV, C=CHUNK, PREC=prec, **launch,
    )  # fmt: skip
    kernel, launch = pick_launch(_grads_h_kernel, _grads_h_tuned, q, nw)
    kernel[(idx.num_chunks, H)](
        k, g, hs, x, y, beta, dhs, e, dk32, dk, idx.chunk_info,
        H=H, D=D, BD=BD, C=CHUNK, LOWP=lowp, PREC=prec, **launch,
    )  # fmt: skip
    return dk, dv
