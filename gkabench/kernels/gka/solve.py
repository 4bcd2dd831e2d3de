"""Triton building blocks shared by the GKA chunk kernels (gka-spec.md sections 2-3).

All helpers work on one chunk of ``C`` tokens of one head, held on-chip:

* ``G [C]``: cumulative natural-log decay since the chunk start (``G_j = g_0 + ... + g_j``), float64: with
  strong decay |G| reaches hundreds inside a chunk and a float32 cumsum loses ~|G| * 6e-8 in every difference
  ``G_j - G_i`` (1e-5 relative in the decay factors, seen in the tests); differences are taken in float64 and
  only then rounded to float32 for ``exp``.
* ``decay_lower(G)``: ``M[j, i] = exp(G_j - G_i)`` for ``i <= j`` else 0 (``[C, C]``, float32).
* ``chunk_norms``: ``||H_t||_F`` for every token of the chunk in closed form, from the chunk-initial state.
* ``solve_operands`` / ``apply_h`` / ``chebyshev``: the normalised operands ``H0 / ||H0||`` and keys in the dot
  dtype, ``H_t x`` for all C tokens at once, and the r-step Chebyshev solve of ``(H_t + lam_t I) x = rhs``.
  ``chebyshev_lowp``: the same solve for the float16 ``prep`` variant, rhs re-read from memory every iteration.
* ``beta_suffix``: the suffix sums of the backward's ``beta_t H_t`` term; ``load_tile``: masked tile loads.

Row ``j`` of an ``[C, D]`` tile is token ``j`` of the chunk. ``H_t`` is never formed:
``H_t x = exp(G_j) H0 x + sum_{i<=j} exp(G_j - G_i) k_i (k_i . x)``.

Precision: ``LOWP`` (bf16/fp16 inputs) runs the iteration's matmuls in float16 on normalised operands (tensor
cores, fp32 accumulation, fp32 iterates); otherwise they run in full fp32 (``PREC = "ieee"``), which the 1e-5
accuracy target at ``num_iter = 80`` needs (tf32 alone floors near 3e-4).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_tokens(chunk_info, g, i_c, i_h, H: tl.constexpr, C: tl.constexpr):
    """Tokens of chunk ``i_c`` for head ``i_h``: ``(ts, te, t [C], tm [C], G [C])`` — first and one-past-last token,
    the token indices, their validity mask, and the float64 cumulative log decay since the chunk start (see the
    module docstring for why float64)."""
    ts = tl.load(chunk_info + 2 * i_c)
    te = tl.load(chunk_info + 2 * i_c + 1)
    t = ts + tl.arange(0, C)
    tm = t < te
    G = tl.cumsum(tl.load(g + t * H + i_h, mask=tm, other=0.0).to(tl.float64), axis=0)
    return ts, te, t, tm, G


@triton.jit
def scan_tile_start(init, HAS_INIT: tl.constexpr, i_n, i_h, rk, c0, H: tl.constexpr, D: tl.constexpr,
                    DW: tl.constexpr, BK: tl.constexpr, BW: tl.constexpr):  # fmt: skip
    """Start of a state scan over one ``[BK, BW]`` tile (rows ``rk``, columns ``c0..``) of a ``[D, DW]`` per-(sequence,
    head) state: ``(row mask, columns rw, column mask, offsets within a state, tile mask, initial tile)``; the tile
    starts from ``init[i_n, i_h]`` when HAS_INIT, else from zeros (float32)."""
    rkm = rk < D
    rw = c0 + tl.arange(0, BW)
    rwm = rw < DW
    st_off = rk[:, None] * DW + rw[None, :]
    m2 = rkm[:, None] & rwm[None, :]
    h = tl.zeros([BK, BW], dtype=tl.float32)
    if HAS_INIT:
        h += tl.load(init + (i_n * H + i_h).to(tl.int64) * D * DW + st_off, mask=m2, other=0.0)
    return rkm, rw, rwm, st_off, m2, h


@triton.jit
def decay_lower(G, C: tl.constexpr):
    """``M[j, i] = exp(G_j - G_i)`` for ``i <= j`` else 0. The masked entries are set before ``exp`` so a
    strongly decaying chunk never produces ``inf * 0``."""
    r = tl.arange(0, C)
    low = r[:, None] >= r[None, :]
    return tl.exp(tl.where(low, (G[:, None] - G[None, :]).to(tl.float32), float("-inf")))


@triton.jit
def decay_upper(G, C: tl.constexpr):
    """Transpose of :func:`decay_lower`: ``Mt[i, j] = exp(G_j - G_i)`` for ``j >= i`` else 0."""
    r = tl.arange(0, C)
    up = r[:, None] <= r[None, :]
    return tl.exp(tl.where(up, (G[None, :] - G[:, None]).to(tl.float32), float("-inf")))


@triton.jit
def chunk_norms(K, Hm, G, FLOOR: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """Per-token ``||H_t||_F`` (floored at FLOOR as reference.frobenius_norms does) for a chunk.

    K ``[C, BD]`` float32 keys, Hm ``[BD, BD]`` float32 chunk-initial state (either orientation: only
    ``||H0||^2`` and ``k^T H0 k`` are used), G ``[C]``. Returns ``(n [C], n2_raw [C])``.

    ``||H_t||^2 = e^{2G_j} ||H0||^2 + 2 e^{G_j} sum_{i<=j} e^{G_j-G_i} k_i^T H0 k_i
                 + sum_{m<=j} e^{2(G_j-G_m)} c_m``, with
    ``c_m = (k_m.k_m)^2 + 2 sum_{i<m} e^{G_m-G_i} (k_i.k_m)^2`` (the pairs whose later index is m).
    Every term is >= 0 for a PSD H0, so fp32 loses nothing to cancellation.
    """
    a0 = tl.sum(tl.sum(Hm * Hm, axis=1), axis=0)
    kh = tl.dot(K, Hm, input_precision=PREC)
    b = tl.sum(kh * K, axis=1)  # k_i^T H0 k_i
    gram = tl.dot(K, tl.trans(K), input_precision=PREC)
    M = decay_lower(G, C)
    r = tl.arange(0, C)
    strict = r[:, None] > r[None, :]
    kk = tl.sum(K * K, axis=1)
    cm = tl.sum(tl.where(strict, 2.0 * M * gram * gram, 0.0), axis=1) + kk * kk
    F = tl.sum(M * M * cm[None, :], axis=1)
    cross = tl.sum(M * b[None, :], axis=1)
    eG = tl.exp(G.to(tl.float32))
    n2 = eG * eG * a0 + 2.0 * eG * cross + F
    n = tl.sqrt(tl.maximum(n2, FLOOR * FLOOR))
    return n, n2


@triton.jit
def apply_h(X, Hop, Kd, M, eGn0, LOWP: tl.constexpr, PREC: tl.constexpr):
    """Rows ``H_t x_t`` for a chunk: ``e^{G_j} n0 (X Hop) + ((X K^T) o M) K``.

    X ``[C, BD]`` float32; ``Hop = H0^T / n0`` (forward solve) or ``H0 / n0`` (adjoint solve) ``[BD, BD]`` and the
    keys Kd ``[C, BD]``, both in the dot dtype; M ``[C, C]`` from :func:`decay_lower`; eGn0 ``[C] = e^{G_j} n0``
    with ``n0 = ||H0||_F``. With LOWP the dots run in float16: H0 / n0 has entries in [-1, 1] and the callers
    scale X to O(1), so float16's 11-bit mantissa applies (bfloat16's 8 bits cost ~1e-2 at the condition
    numbers of the solve).
    """
    if LOWP:
        Xd = X.to(Kd.dtype)
    else:
        Xd = X
    acc = tl.dot(Xd, Hop, input_precision=PREC) * eGn0[:, None]
    S = tl.dot(Xd, tl.trans(Kd), input_precision=PREC) * M.to(tl.float32)
    if LOWP:
        Sd = S.to(Kd.dtype)
    else:
        Sd = S
    return tl.dot(Sd, Kd, acc=acc, input_precision=PREC)


@triton.jit
def chebyshev(Rhs, Hop, Kd, M, eGn0, n, ridge, num_iter, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``num_iter`` Chebyshev steps for ``(H_t + lam_t I) x_t = rhs_t``, all rows of a chunk at once (spec sec. 2).

    Run on the normalised system ``(H_t / n + ridge I) xh = rhs / |rhs|`` (``x = xh |rhs| / n``, n = ||H_t||_F
    floored): eigenvalue bounds ``mu = ridge``, ``L = 1 + ridge``, step ``2 / (1 + 2 ridge)`` and
    ``rho = 1 / (1 + 2 ridge)`` are then the same for every row, and the iterates are O(1), which float16 needs.
    In exact arithmetic this is the spec's iteration (``s A = s_hat A / n``). Iterates are float32.
    """
    rn = tl.sqrt(tl.sum(Rhs * Rhs, axis=1))
    R = Rhs * tl.where(rn > 0.0, 1.0 / rn, 0.0)[:, None]
    sh = 2.0 / (1.0 + 2.0 * ridge)
    c1 = 1.0 / (1.0 + 2.0 * ridge)  # 1 - sh * ridge
    q_rho2 = c1 * c1 * 0.25
    sinv = (sh / n)[:, None]
    if LOWP:
        # Register budget: at C = 64 rows one warpgroup holds each [64, 128] fp32 tile at 64 registers per
        # thread (Triton gives chained dots one warpgroup per 64 rows), so only x and the accumulator stay
        # fp32; the unit-norm rhs, x_{i-1} (O(1)) and the decay mask are held in float16.
        Rl = R.to(Kd.dtype)
        Ml = M.to(Kd.dtype)
    else:
        Rl = R
        Ml = M
    x = sh * R
    x_prev = tl.zeros_like(Rl)
    w = q_rho2 * 0.0 + 2.0
    for _ in range(num_iter):
        w = 1.0 / (1.0 - q_rho2 * w)
        acc = apply_h(x, Hop, Kd, Ml, eGn0, LOWP, PREC)
        # x_new = w (c1 x - sinv acc + sh r) + (1 - w) x_prev, with the scalar/row factors multiplied first so each
        # element costs one FMUL and three FFMA (the loop is issue-bound next to its tensor-core work)
        x_new = (w * c1) * x + (-w * sinv) * acc + (w * sh) * Rl.to(tl.float32) + (1.0 - w) * x_prev.to(tl.float32)
        x_prev = x.to(Rl.dtype)
        x = x_new
    return x * (rn / n)[:, None]


@triton.jit
def chebyshev_lowp(rp, ts, te, stride, rfac, Hop, Kd, M, eGn0, n, ridge, num_iter, D: tl.constexpr,
                   C: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    """:func:`chebyshev` for the float16 operands (LOWP) of the ``prep`` variant, with a right-hand side that is
    never held on-chip across the loop. Returns the unit-rhs solution ``xh``; the caller scales it by
    ``|rhs_j| / n_j``.

    The rhs is ``rfac_j * R_j``, R the ``[C, D]`` tile at rows ``ts..te`` of ``rp`` (row stride ``stride``, any
    float dtype; rows past ``te`` read 0), ``rfac [C]`` chosen by the caller so that every row has unit norm (0
    for a zero row): the iteration is :func:`chebyshev`'s. R is re-read every iteration (from L1/L2: this program
    has just read or written it), volatile so that the compiler cannot hoist it out of the loop. Why: in the
    fused loop Triton hoisted the float32 conversions of the float16 rhs and decay mask out of the loop, so both
    were held in float32 (64 + 32 registers per thread at 4 warps) next to x, x_{i-1}, the accumulator and the
    dot operands: ~95 spill loads per iteration in the sm_90 build (scripts/compile_stats_sm90.py).

    The decay mask is applied in float16 (``S`` rounded to float16, then times the float16 mask, one HMUL2 per
    two elements) instead of in float32 for the same reason; it adds one float16 rounding of ``S`` (2^-11
    relative), the precision of the dot operand it feeds anyway.
    """
    sh = 2.0 / (1.0 + 2.0 * ridge)
    c1 = 1.0 / (1.0 + 2.0 * ridge)  # 1 - sh * ridge
    q_rho2 = c1 * c1 * 0.25
    sinv = (sh / n)[:, None]
    Ml = M.to(Kd.dtype)
    r = ts + tl.arange(0, C)
    d = tl.arange(0, BD)
    p = rp + r[:, None].to(tl.int64) * stride + d[None, :]
    pm = (r < te)[:, None] & (d < D)[None, :]
    x = tl.load(p, mask=pm, other=0.0).to(tl.float32) * (sh * rfac)[:, None]
    x_prev = tl.zeros_like(x).to(Kd.dtype)
    w = q_rho2 * 0.0 + 2.0
    for _ in range(num_iter):
        w = 1.0 / (1.0 - q_rho2 * w)
        Xd = x.to(Kd.dtype)
        acc = tl.dot(Xd, Hop) * eGn0[:, None]
        Sd = tl.dot(Xd, tl.trans(Kd)).to(Kd.dtype) * Ml
        acc = tl.dot(Sd, Kd, acc=acc)
        R = tl.load(p, mask=pm, other=0.0, volatile=True).to(tl.float32)
        # the update of chebyshev (one FMUL + three FFMA per element), the rhs's row factor folded into one scalar
        x_new = (w * c1) * x + (-w * sinv) * acc + ((w * sh) * rfac)[:, None] * R + (1.0 - w) * x_prev.to(tl.float32)
        x_prev = x.to(Kd.dtype)
        x = x_new
    return x


@triton.jit
def solve_operands(Hm, K, LOWP: tl.constexpr):
    """``(Hop, Kd, n0)`` for :func:`chebyshev` from the float32 state ``Hm`` (either orientation) and keys K."""
    n0 = tl.sqrt(tl.sum(tl.sum(Hm * Hm, axis=1), axis=0))
    Hn = Hm * tl.where(n0 > 0.0, 1.0 / n0, 0.0)
    if LOWP:
        return Hn.to(tl.float16), K.to(tl.float16), n0
    else:
        return Hn, K, n0


@triton.jit
def beta_suffix(beta, G, C: tl.constexpr):
    """``B[m] = sum_{j >= m} exp(2 (G_j - G_m)) beta_j`` (every exponent <= 0), ``[C]``."""
    Mt = decay_upper(G, C)  # [m, j] = e^{G_j - G_m}, j >= m
    return tl.sum(Mt * Mt * beta[None, :], axis=1)


@triton.jit
def load_tile(ptr, row0, nrows, ncols, stride_r, stride_c, BR: tl.constexpr, BC: tl.constexpr,
              COLMAJOR: tl.constexpr):  # fmt: skip
    """The ``[BR, BC]`` tile at rows ``row0..`` of an ``(nrows, ncols)`` matrix with strides ``(stride_r, stride_c)``;
    out-of-range entries read as 0. (COLMAJOR only documents the access order: ``stride_c != 1``. Block pointers
    were tried: Triton >= 3.7 removed them, and on 3.6 they compiled to the same register use.)"""
    r = row0 + tl.arange(0, BR)
    c = tl.arange(0, BC)
    p = ptr + r[:, None].to(tl.int64) * stride_r + c[None, :] * stride_c
    return tl.load(p, mask=(r < nrows)[:, None] & (c < ncols)[None, :], other=0.0)


@triton.jit
def load_rows(ptr, t, tmask, stride_t, off, d, dmask):
    """``[C, BD]`` float tile: rows are tokens ``t`` (row stride ``stride_t``), columns ``d`` from ``off``."""
    p = ptr + t[:, None].to(tl.int64) * stride_t + off + d[None, :]
    return tl.load(p, mask=tmask[:, None] & dmask[None, :], other=0.0)
