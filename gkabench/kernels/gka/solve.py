"""Triton building blocks shared by the GKA chunk kernels (gka-spec.md sections 2-3).

All helpers work on one chunk of ``C`` tokens of one head, held on-chip:

* ``G [C]``: cumulative natural-log decay since the chunk start (``G_j = g_0 + ... + g_j``), float32.
* ``decay_lower(G)``: ``M[j, i] = exp(G_j - G_i)`` for ``i <= j`` else 0 (``[C, C]``, float32).
* ``chunk_norms``: ``||H_t||_F`` for every token of the chunk in closed form, from the chunk-initial state.
* ``apply_a`` / ``chebyshev``: ``(H_t + lam_t I) x`` for all C tokens at once, and the r-step Chebyshev solve.

Row ``j`` of an ``[C, D]`` tile is token ``j`` of the chunk. ``H_t`` is never formed:
``H_t x = exp(G_j) H0 x + sum_{i<=j} exp(G_j - G_i) k_i (k_i . x)``.

Precision: ``LOWP`` (bf16/fp16 inputs) runs the iteration's matmuls on the input dtype (tensor cores, fp32
accumulation, fp32 iterates); otherwise they run in full fp32 (``PREC = "ieee"``), which the 1e-5 accuracy target
at ``num_iter = 80`` needs (tf32 alone floors near 3e-4).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def decay_lower(G, C: tl.constexpr):
    """``M[j, i] = exp(G_j - G_i)`` for ``i <= j`` else 0. The masked entries are set before ``exp`` so a
    strongly decaying chunk never produces ``inf * 0``."""
    r = tl.arange(0, C)
    low = r[:, None] >= r[None, :]
    return tl.exp(tl.where(low, G[:, None] - G[None, :], float("-inf")))


@triton.jit
def decay_upper(G, C: tl.constexpr):
    """Transpose of :func:`decay_lower`: ``Mt[i, j] = exp(G_j - G_i)`` for ``j >= i`` else 0."""
    r = tl.arange(0, C)
    up = r[:, None] <= r[None, :]
    return tl.exp(tl.where(up, G[None, :] - G[:, None], float("-inf")))


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
    eG = tl.exp(G)
    n2 = eG * eG * a0 + 2.0 * eG * cross + F
    n = tl.sqrt(tl.maximum(n2, FLOOR * FLOOR))
    return n, n2


@triton.jit
def apply_h(X, Hop, Kd, M, eG, LOWP: tl.constexpr, PREC: tl.constexpr):
    """Rows ``H_t x_t`` for a chunk: ``e^{G_j} (X Hop) + ((X K^T) o M) K``.

    X ``[C, BD]`` float32; Hop ``[BD, BD]`` in the dot dtype (``H0^T`` for the forward solve, ``H0`` for the
    adjoint one); Kd ``[C, BD]`` keys in the dot dtype; M from :func:`decay_lower`; eG ``[C]``.
    """
    if LOWP:
        Xd = X.to(Kd.dtype)
    else:
        Xd = X
    acc = tl.dot(Xd, Hop, input_precision=PREC) * eG[:, None]
    S = tl.dot(Xd, tl.trans(Kd), input_precision=PREC) * M
    if LOWP:
        Sd = S.to(Kd.dtype)
    else:
        Sd = S
    return tl.dot(Sd, Kd, acc=acc, input_precision=PREC)


@triton.jit
def chebyshev(Rhs, Hop, Kd, M, eG, n, ridge, num_iter, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``num_iter`` Chebyshev steps for ``(H_t + lam_t I) x_t = rhs_t``, all rows of a chunk at once (spec sec. 2).

    ``lam = ridge * n``, ``mu = lam``, ``L = n + lam``: the step ``s = 2 / (n + 2 lam)`` is per row and
    ``rho = (L - mu) / (L + mu) = 1 / (1 + 2 ridge)`` is the same for every row, so the weights ``w_i`` are
    scalars. Iterates stay in float32.
    """
    lam = ridge * n
    s = (2.0 / (n + 2.0 * lam))[:, None]
    rho = 1.0 / (1.0 + 2.0 * ridge)
    q_rho2 = rho * rho * 0.25
    x_prev = tl.zeros_like(Rhs)
    x = s * Rhs
    w = q_rho2 * 0.0 + 2.0
    for _ in range(num_iter):
        w = 1.0 / (1.0 - q_rho2 * w)
        ax = apply_h(x, Hop, Kd, M, eG, LOWP, PREC) + lam[:, None] * x
        x_new = w * (x - s * (ax - Rhs)) + (1.0 - w) * x_prev
        x_prev = x
        x = x_new
    return x


@triton.jit
def beta_suffix(beta, G, C: tl.constexpr):
    """``B[m] = sum_{j >= m} exp(2 (G_j - G_m)) beta_j`` (every exponent <= 0), ``[C]``."""
    Mt = decay_upper(G, C)  # [m, j] = e^{G_j - G_m}, j >= m
    return tl.sum(Mt * Mt * beta[None, :], axis=1)


@triton.jit
def load_rows(ptr, t, tmask, stride_t, off, d, dmask):
    """``[C, BD]`` float tile: rows are tokens ``t`` (row stride ``stride_t``), columns ``d`` from ``off``."""
    p = ptr + t[:, None].to(tl.int64) * stride_t + off + d[None, :]
    return tl.load(p, mask=tmask[:, None] & dmask[None, :], other=0.0)
