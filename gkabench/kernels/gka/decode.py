"""Recurrent GKA steps for decoding from a cached state (the layer's cache path).

:func:`gka_decode` advances each sequence of a batch by its ``T`` (usually 1) new tokens, token by token, exactly as
:func:`gka_reference` does (spec sections 1-2): update ``H``, ``U``, Chebyshev solve, alpha mix, readout. On CUDA
one Triton program per (sequence, head) keeps ``H [D, D]`` and ``U [D, Dv]`` in registers (float32) for all T
tokens and writes the new state once; elsewhere it falls back to :func:`gka_reference`. Sequences at different
positions are fine: each batch row carries its own state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_fwd import autotuned, pick_launch, warp_configs
from .common import DEFAULT_NUM_ITER, DEFAULT_RIDGE, NORM_FLOOR, GKAState, default_scale, validate_inputs
from .reference import gka_reference


@triton.jit(do_not_specialize=["T", "num_iter"])
def _decode_kernel(q, k, v, g, alpha, h_kk, h_kv, o, nh_kk, nh_kv, T, scale, ridge, num_iter, NPROG,
                   H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   FLOOR: tl.constexpr):  # fmt: skip
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    d = tl.arange(0, BD)
    dm = d < D
    e = tl.arange(0, BDV)
    em = e < DV
    mdd = dm[:, None] & dm[None, :]
    mde = dm[:, None] & em[None, :]
    sk = i_nh.to(tl.int64) * D * D + d[:, None] * D + d[None, :]
    sv = i_nh.to(tl.int64) * D * DV + d[:, None] * DV + e[None, :]
    Hm = tl.load(h_kk + sk, mask=mdd, other=0.0).to(tl.float32)
    U = tl.load(h_kv + sv, mask=mde, other=0.0).to(tl.float32)
    rho = 1.0 / (1.0 + 2.0 * ridge)
    q_rho2 = rho * rho * 0.25
    for t in range(T):
        row = (i_n * T + t).to(tl.int64) * H + i_h
        kt = tl.load(k + row * D + d, mask=dm, other=0.0).to(tl.float32)
        qv = tl.load(q + row * D + d, mask=dm, other=0.0).to(tl.float32)
        vt = tl.load(v + row * DV + e, mask=em, other=0.0).to(tl.float32)
        gam = tl.exp(tl.load(g + row).to(tl.float32))
        at = tl.load(alpha + row).to(tl.float32)
        Hm = gam * Hm + kt[:, None] * kt[None, :]
        U = gam * U + kt[:, None] * vt[None, :]
        n = tl.sqrt(tl.maximum(tl.sum(tl.sum(Hm * Hm, axis=1), axis=0), FLOOR * FLOOR))
        lam = ridge * n
        s = 2.0 / (n + 2.0 * lam)
        x_prev = tl.zeros_like(qv)
        x = s * qv
        w = q_rho2 * 0.0 + 2.0
        for _ in range(num_iter):
            w = 1.0 / (1.0 - q_rho2 * w)
            ax = tl.sum(Hm * x[None, :], axis=1) + lam * x
            x_new = w * (x - s * (ax - qv)) + (1.0 - w) * x_prev
            x_prev = x
            x = x_new
        qt = qv + at * (x - qv)
        out = tl.sum(U * qt[:, None], axis=0) * scale
        tl.store(o + row * DV + e, out.to(o.dtype.element_ty), mask=em)
    tl.store(nh_kk + sk, Hm, mask=mdd)
    tl.store(nh_kv + sv, U, mask=mde)


# Warps tried on a GPU, per (H, D, Dv) and number of programs NPROG = B x H (the best differs between one sequence,
# where the latency of one program's 30 reductions is everything, and batch 64, where 1024 programs of 16 warps
# run in ~8 waves: device run 3 measured 63.9 us at batch 1 and 248.8 us at batch 64 with 16 warps). The kernel
# only stores its outputs (the new state is written apart from the old), so tuning reruns are harmless.
DECODE_CONFIGS = warp_configs(4, 8, 16)
_decode_tuned = autotuned(_decode_kernel, DECODE_CONFIGS, ["H", "D", "DV", "NPROG"])


def gka_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    alpha: torch.Tensor,
    state: GKAState,
    *,
    num_iter: int = DEFAULT_NUM_ITER,
    ridge: float = DEFAULT_RIDGE,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, GKAState]:
    """Advance each sequence by its new tokens from ``state``; no autograd (inference only).

    Args:
        q, k: ``[B, T, H, D]`` (T small, usually 1); v: ``[B, T, H, Dv]``; g, alpha: ``[B, T, H]``.
        state: ``(h_kk [B, H, D, D], h_kv [B, H, D, Dv])`` float32, one row per sequence.
        backend: ``"auto"`` (Triton for CUDA tensors, else :func:`gka_reference`), ``"triton"`` (also under
            ``TRITON_INTERPRET=1`` on CPU) or ``"reference"``.

    Returns:
        ``o [B, T, H, Dv]`` in v's dtype and the new state (new float32 tensors; the input state is not modified).
    """
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"gka_decode: unknown backend {backend!r}; choose auto, triton or reference")
    if state is None:
        raise ValueError("gka_decode: a state (h_kk, h_kv) is required; start from zeros for an empty cache")
    shapes = validate_inputs(q, k, v, g, alpha, num_iter=num_iter, ridge=ridge, initial_state=state, cu_seqlens=None)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype != torch.float64)
    if not use_triton:
        o, new_state = gka_reference(
            q, k, v, g, alpha, num_iter=num_iter, ridge=ridge, scale=scale, initial_state=state,
            output_final_state=True,
        )  # fmt: skip
        return o, new_state
    B, T, H, D, DV = shapes.B, shapes.T, shapes.H, shapes.D, shapes.Dv
    h_kk, h_kv = (s.contiguous().float() for s in state)
    new_kk, new_kv = torch.empty_like(h_kk), torch.empty_like(h_kv)
    o = torch.empty(B, T, H, DV, dtype=v.dtype, device=v.device)
    BD, BDV = triton.next_power_of_2(D), triton.next_power_of_2(DV)
    kernel, launch = pick_launch(_decode_kernel, _decode_tuned, q, 16 if BD * max(BD, BDV) >= 128 * 128 else 4)
    kernel[(B * H,)](
        q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), alpha.contiguous(), h_kk, h_kv, o,
        new_kk, new_kv, T, float(default_scale(D, scale)), float(ridge), int(num_iter), B * H,
        H=H, D=D, DV=DV, BD=BD, BDV=BDV, FLOOR=NORM_FLOOR, **launch,
    )  # fmt: skip
    return o, (new_kk, new_kv)
