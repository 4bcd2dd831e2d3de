"""The GKA op (Gated KalmaNet, gka-spec.md sections 1-4).

Public API (a contract; later code and independent checks call it exactly so)::

    from gkabench.kernels.gka import gka, gka_reference, gka_exact
    o, final_state = gka(q, k, v, g, alpha, *, num_iter=30, ridge=0.02, scale=None,
                         initial_state=None, output_final_state=False, cu_seqlens=None)

Files: ``common.py`` (validation, constants), ``reference.py`` (token-by-token recurrence and exact
solve, pure PyTorch, float64-capable), ``chunk_torch.py`` (the chunk-wise form in pure PyTorch: the fast CPU
path), ``chunk.py`` (Triton chunk-wise forward/backward, CUDA only), ``decode.py`` (recurrent steps for the
layer's cache path).
"""

from __future__ import annotations

import torch

from .common import DEFAULT_NUM_ITER, DEFAULT_RIDGE, NORM_FLOOR, GKAState, chebyshev_error_bound
from .chunk_torch import gka_chunked
from .reference import frobenius_norms, gka_exact, gka_reference, solve_chebyshev, solve_exact

BACKENDS = ("auto", "reference", "chunked", "triton")


def triton_available() -> bool:
    """True when the Triton chunk kernels can run here (a CUDA device and an importable triton)."""
    if not torch.cuda.is_available():
        return False
    try:
        from . import chunk  # noqa: F401
    except ImportError:
        return False
    return True


def gka(
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
    backend: str = "auto",
) -> tuple[torch.Tensor, GKAState | None]:
    """GKA, dispatched by device: CUDA tensors go to the Triton chunk kernels
    (``gkabench.kernels.gka.chunk``) when they are available; everything else to :func:`gka_chunked`, the
    same chunk-wise arithmetic in plain PyTorch (autograd backward).

    Shapes and semantics are those of :func:`gka_reference`. ``backend`` forces a path: ``"reference"``
    (token-by-token), ``"chunked"`` (pure PyTorch chunks) or ``"triton"``; ``"auto"`` picks by device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"gka: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kwargs = dict(
        num_iter=num_iter, ridge=ridge, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )  # fmt: skip
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "chunked"
    if backend == "triton":
        if not q.is_cuda:
            raise ValueError("gka: backend='triton' needs CUDA tensors; move them with .cuda() or use backend='chunked'")
        from .chunk import chunk_gka

        return chunk_gka(q, k, v, g, alpha, **kwargs)
    if backend == "chunked":
        return gka_chunked(q, k, v, g, alpha, **kwargs)
    return gka_reference(q, k, v, g, alpha, **kwargs)


__all__ = [
    "gka",
    "gka_reference",
    "gka_exact",
    "gka_chunked",
    "solve_chebyshev",
    "solve_exact",
    "frobenius_norms",
    "chebyshev_error_bound",
    "triton_available",
    "DEFAULT_NUM_ITER",
    "DEFAULT_RIDGE",
    "NORM_FLOOR",
    "GKAState",
]
