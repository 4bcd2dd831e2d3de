"""Shared pieces of every GKA implementation: constants, input validation, state helpers.

Every path of the GKA op (the float64 references, the Triton kernels, the decode kernel) validates its
inputs through :func:`validate_inputs`, so a user gets the same one-line ``ValueError`` whichever
backend runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_NUM_ITER = 30
DEFAULT_RIDGE = 0.02
# ||H_t||_F is floored at this value before it sets the ridge and the eigenvalue bounds, so an all-zero
# state (zero keys, padding) gives finite outputs: the solve then sees H + ridge * NORM_FLOOR * I.
NORM_FLOOR = 1e-6

GKAState = tuple[torch.Tensor, torch.Tensor]
"""``(h_kk [N, H, D, D], h_kv [N, H, D, Dv])``: decayed sums of k k^T and k v^T, float32 (float64 for
float64 inputs). ``h_kv`` has flash-linear-attention's orientation (key dim first)."""


@dataclass(frozen=True)
class GKAShapes:
    """Sizes read off validated inputs. ``N`` = number of sequences (B, or len(cu_seqlens) - 1)."""

    B: int
    T: int
    H: int
    D: int
    Dv: int
    N: int
    state_dtype: torch.dtype


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """States and iterates are float32, float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def validate_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    alpha: torch.Tensor,
    *,
    num_iter: int,
    ridge: float,
    initial_state: GKAState | None,
    cu_seqlens: torch.Tensor | None,
) -> GKAShapes:
    """Check shapes, dtypes and devices of the GKA op's inputs; raise a one-line ``ValueError`` naming the fix."""
    names = {"q": q, "k": k, "v": v, "g": g, "alpha": alpha}
    for name, t in names.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"gka: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"gka: {name} must be a floating-point tensor, got {t.dtype}; cast it with .float()")
    if q.ndim != 4:
        raise ValueError(f"gka: q must be [B, T, H, D], got shape {tuple(q.shape)}; add the head dim with q.view(B, T, H, D)")
    if k.shape != q.shape:
        raise ValueError(f"gka: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    B, T, H, D = q.shape
    if v.ndim != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"gka: v must be [B, T, H, Dv] = [{B}, {T}, {H}, Dv], got {tuple(v.shape)}")
    for name, t in (("g", g), ("alpha", alpha)):
        if tuple(t.shape) != (B, T, H):
            raise ValueError(f"gka: {name} must be [B, T, H] = [{B}, {T}, {H}] (one scalar per token and head), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"gka: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    devices = {t.device for t in names.values()}
    if len(devices) != 1:
        raise ValueError(f"gka: all inputs must be on one device, got {sorted(str(d) for d in devices)}")
    if D < 1 or v.shape[-1] < 1:
        raise ValueError(f"gka: head dims must be >= 1, got D={D}, Dv={v.shape[-1]}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 0:
        raise ValueError(f"gka: num_iter must be a non-negative int, got {num_iter!r}")
    try:
        ridge_ok = math.isfinite(float(ridge)) and float(ridge) > 0.0
    except (TypeError, ValueError):
        ridge_ok = False
    if not ridge_ok:
        raise ValueError(f"gka: ridge must be a finite number > 0 (the paper uses 0.02), got {ridge!r}")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"gka: with cu_seqlens the batch must be 1 (packed sequences), got B={B}; flatten to [1, sum(T), H, D]")
        if not isinstance(cu_seqlens, torch.Tensor):
            raise ValueError("gka: cu_seqlens must be a 1-D int32/int64 tensor [0, t1, ..., T], e.g. torch.tensor(offsets, dtype=torch.int32)")
        if cu_seqlens.ndim != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.numel() < 2:
            raise ValueError("gka: cu_seqlens must be a 1-D int32/int64 tensor [0, t1, ..., T] with at least two entries")
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
            raise ValueError(f"gka: cu_seqlens must start at 0, end at T={T} and never decrease, got {bounds}")
        N = len(bounds) - 1
    sdtype = state_dtype_for(q.dtype)
    if initial_state is not None:
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise ValueError("gka: initial_state must be a pair (h_kk [N, H, D, D], h_kv [N, H, D, Dv])")
        h_kk, h_kv = initial_state
        if not (isinstance(h_kk, torch.Tensor) and isinstance(h_kv, torch.Tensor)):
            raise ValueError("gka: initial_state must be a pair of tensors (h_kk [N, H, D, D], h_kv [N, H, D, Dv])")
        if tuple(h_kk.shape) != (N, H, D, D) or tuple(h_kv.shape) != (N, H, D, v.shape[-1]):
            raise ValueError(
                f"gka: initial_state must be (h_kk [{N}, {H}, {D}, {D}], h_kv [{N}, {H}, {D}, {v.shape[-1]}]), "
                f"got ({tuple(h_kk.shape)}, {tuple(h_kv.shape)})"
            )
        if h_kk.device != q.device or h_kv.device != q.device:
            raise ValueError("gka: initial_state must be on the inputs' device")
    return GKAShapes(B=B, T=T, H=H, D=D, Dv=v.shape[-1], N=N, state_dtype=sdtype)


def sequence_bounds(shapes: GKAShapes, cu_seqlens: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """``[(n, bos, eos)]``: batch row (or 0 when packed), first token and one-past-last token of each sequence."""
    if cu_seqlens is None:
        return [(n, 0, shapes.T) for n in range(shapes.B)]
    b = cu_seqlens.tolist()
    return [(0, b[i], b[i + 1]) for i in range(len(b) - 1)]


def run_per_sequence(
    runner, q, k, v, g, alpha, *, num_iter, ridge, initial_state, output_final_state, cu_seqlens
) -> tuple[torch.Tensor, GKAState | None]:
    """Shared driver of the pure-PyTorch paths: validate, cast to the state dtype, build the initial state, run
    ``runner(q, k, v, g, alpha, h_kk, h_kv) -> (o, h_kk, h_kv)`` on the whole batch (``[N, T, H, ...]`` tensors),
    or once per packed sequence when ``cu_seqlens`` is given, and return ``(o in v's dtype, final state or None)``."""
    shapes = validate_inputs(q, k, v, g, alpha, num_iter=num_iter, ridge=ridge, initial_state=initial_state, cu_seqlens=cu_seqlens)
    cdt = shapes.state_dtype
    qc, kc, vc, gc, ac = (t.to(cdt) for t in (q, k, v, g, alpha))
    if initial_state is None:
        h_kk0 = qc.new_zeros(shapes.N, shapes.H, shapes.D, shapes.D)
        h_kv0 = qc.new_zeros(shapes.N, shapes.H, shapes.D, shapes.Dv)
    else:
        h_kk0, h_kv0 = (s.to(cdt) for s in initial_state)
    if cu_seqlens is None:
        o, h_kk, h_kv = runner(qc, kc, vc, gc, ac, h_kk0, h_kv0)
    else:
        outs, kks, kvs = [], [], []
        for n, (_, bos, eos) in enumerate(sequence_bounds(shapes, cu_seqlens)):
            sl = slice(bos, eos)
            o_n, kk_n, kv_n = runner(qc[:, sl], kc[:, sl], vc[:, sl], gc[:, sl], ac[:, sl], h_kk0[n : n + 1], h_kv0[n : n + 1])
            outs.append(o_n)
            kks.append(kk_n)
            kvs.append(kv_n)
        o, h_kk, h_kv = torch.cat(outs, 1), torch.cat(kks, 0), torch.cat(kvs, 0)
    return o.to(v.dtype), ((h_kk, h_kv) if output_final_state else None)


def default_scale(D: int, scale: float | None) -> float:
    return D**-0.5 if scale is None else float(scale)


def chebyshev_error_bound(num_iter: int, ridge: float = DEFAULT_RIDGE) -> float:
    """Worst-case relative 2-norm error of ``num_iter`` Chebyshev steps (spec section 2).

    The iterate is a polynomial of degree ``num_iter + 1`` in A applied to q, and the error polynomial is
    bounded by ``1 / T_{r+1}((L + mu) / (L - mu))`` on the spectrum; ``(L + mu) / (L - mu) = 1 + 2 * ridge``.
    """
    import math

    z = 1.0 + 2.0 * ridge
    return 1.0 / math.cosh((num_iter + 1) * math.acosh(z))
