"""GKA in chunk-wise form (gka-spec.md section 3), in plain PyTorch: the same arithmetic as the Triton kernels,
written as batched matmuls, differentiable by autograd.

Why it exists: the token-by-token reference does ``T * num_iter`` tiny matrix-vector steps, which makes training
even a tiny GKA model on a CPU slow. Here each chunk of C tokens runs its ``num_iter`` Chebyshev steps as
``[C, D] x [D, D]`` and ``[C, D] x [D, C]`` products, so the Python loop is over chunks, not tokens. It is also
the readable statement of the chunk algebra the Triton kernels implement:

- per token j of a chunk with cumulative log decay ``G_j`` (from the chunk start) and chunk-initial state H0:
  ``H_j x = e^{G_j} H0 x + sum_{i<=j} e^{G_j - G_i} k_i (k_i^T x)``;
- ``||H_j||_F^2 = e^{2G_j} ||H0||^2 + 2 e^{G_j} sum_{i<=j} e^{G_j-G_i} k_i^T H0 k_i
  + sum_{i,l<=j} e^{2G_j-G_i-G_l} (k_i^T k_l)^2`` (every term >= 0: no cancellation);
- the readout ``o_j = scale (e^{G_j} qt_j^T U0 + sum_{i<=j} e^{G_j-G_i} (qt_j^T k_i) v_i^T)``.

Gradients come from autograd through the iterations (it stores them: fine for CPU-sized problems; the Triton
backward uses implicit differentiation instead). Results agree with :func:`gka_reference` to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import DEFAULT_NUM_ITER, DEFAULT_RIDGE, NORM_FLOOR, GKAState, default_scale, run_per_sequence

CHUNK_SIZE = 64


def _chunk(
    q, k, v, g, alpha, h_kk, h_kv, *, num_iter: int, ridge: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk for a batch of sequences. q, k ``[N, H, C, D]``, v ``[N, H, C, Dv]``, g, alpha ``[N, H, C]``,
    h_kk ``[N, H, D, D]``, h_kv ``[N, H, D, Dv]``. Returns (o ``[N, H, C, Dv]``, h_kk', h_kv')."""
    C = q.shape[-2]
    # Cumulative log decay and every exponent of it in float64, then cast: in float32 the differences G_j - G_i
    # of a strongly decaying chunk (|G| ~ 100s) lose ~1e-5, which the r = 80 accuracy would show.
    cdt = g.dtype
    G = g.double().cumsum(-1)  # [N, H, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # decay[j, i] = exp(G_j - G_i) for i <= j; the exponent is masked before exp so it never overflows
    decay = torch.where(causal, G.unsqueeze(-1) - G.unsqueeze(-2), torch.full((), float("-inf"), dtype=G.dtype, device=G.device)).exp().to(cdt)
    eg = G.exp().to(cdt).unsqueeze(-1)  # [N, H, C, 1]

    # Frobenius norms of H_j in closed form
    h0_sq = h_kk.square().sum((-2, -1))[..., None]  # [N, H, 1]
    k_h0_k = ((k @ h_kk) * k).sum(-1)  # [N, H, C]
    gram = k @ k.transpose(-1, -2)  # [N, H, C, C]
    cross = ((decay @ (gram * gram)) * decay).sum(-1)  # sum_{i,l<=j} d_ji d_jl (k_i.k_l)^2
    frob_sq = (2 * G).exp().to(cdt) * h0_sq + 2 * eg.squeeze(-1) * (decay @ k_h0_k.unsqueeze(-1)).squeeze(-1) + cross
    frob = frob_sq.clamp_min(NORM_FLOOR**2).sqrt()  # [N, H, C]

    lam = (ridge * frob).unsqueeze(-1)
    big_l = frob.unsqueeze(-1) + lam
    rho = (big_l - lam) / (big_l + lam)
    step = 2.0 / (big_l + lam)
    quarter_rho2 = rho * rho / 4.0

    h_kk_t = h_kk.transpose(-1, -2)  # rows x^T H^T = (H x)^T: the gradient w.r.t. H then matches H @ x's

    def apply_a(x: torch.Tensor) -> torch.Tensor:
        return eg * (x @ h_kk_t) + ((x @ k.transpose(-1, -2)) * decay) @ k + lam * x

    x_prev, x = torch.zeros_like(q), step * q
    w = torch.full_like(quarter_rho2, 2.0)
    for _ in range(num_iter):
        w = 1.0 / (1.0 - quarter_rho2 * w)
        x, x_prev = w * (x - step * (apply_a(x) - q)) + (1.0 - w) * x_prev, x

    qt = q + alpha.unsqueeze(-1) * (x - q)
    o = scale * (eg * (qt @ h_kv) + ((qt @ k.transpose(-1, -2)) * decay) @ v)

    g_last = G[..., -1:]  # [N, H, 1]
    w_end = (g_last - G).exp().to(cdt).unsqueeze(-1)  # exp(G_C - G_i)  [N, H, C, 1]
    gamma_chunk = g_last.exp().to(cdt).unsqueeze(-1)
    h_kk = gamma_chunk * h_kk + (k * w_end).transpose(-1, -2) @ k
    h_kv = gamma_chunk * h_kv + (k * w_end).transpose(-1, -2) @ v
    return o, h_kk, h_kv


def _run_batch(q, k, v, g, alpha, h_kk, h_kv, *, num_iter, ridge, scale, chunk_size):
    """q, k ``[N, T, H, D]`` (compute dtype) etc. -> (o ``[N, T, H, Dv]``, h_kk, h_kv)."""
    T = q.shape[1]
    pad = (-T) % chunk_size
    if pad:  # padded tokens: zero key/value, no decay -> the state is untouched; their outputs are dropped
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g, alpha = (F.pad(t, (0, 0, 0, pad)) for t in (g, alpha))
    # [N, T, H, ...] -> [N, H, T, ...]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    g, alpha = g.transpose(1, 2), alpha.transpose(1, 2)
    outs = []
    for s in range(0, q.shape[2], chunk_size):
        sl = slice(s, s + chunk_size)
        o, h_kk, h_kv = _chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], g[:, :, sl], alpha[:, :, sl], h_kk, h_kv,
                               num_iter=num_iter, ridge=ridge, scale=scale)  # fmt: skip
        outs.append(o)
    o = torch.cat(outs, 2).transpose(1, 2)[:, :T] if outs else v.transpose(1, 2)[:, :T].new_zeros(v.shape[0], T, v.shape[1], v.shape[-1])
    return o, h_kk, h_kv


def gka_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    alpha: torch.Tensor,
    *,
    num_iter: int = DEFAULT_NUM_ITER,
    ridge: float = DEFAULT_RIDGE,
    scale: float | None = None,
    initial_state: GKAState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, GKAState | None]:
    """GKA in chunk-wise form, pure PyTorch; same signature, shapes and dtypes as :func:`gka_reference`."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"gka_chunked: chunk_size must be a positive int, got {chunk_size!r}")

    def runner(q, k, v, g, alpha, h_kk, h_kv):
        return _run_batch(q, k, v, g, alpha, h_kk, h_kv, num_iter=num_iter, ridge=ridge,
                          scale=default_scale(q.shape[-1], scale), chunk_size=chunk_size)  # fmt: skip

    return run_per_sequence(
        runner, q, k, v, g, alpha, num_iter=num_iter, ridge=ridge, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )  # fmt: skip
