"""Analytic FLOP counts (gka-spec.md section 3), for achieved TFLOP/s in the speed tables.

A multiply-add counts as 2 FLOPs. Per token and head, one Chebyshev iteration of the chunk-wise solve costs
``2 D^2`` (the chunk-initial state term ``X H_[c]^T``) plus ``4 C D`` (``(X K^T) o Mdecay`` then ``. K``), so the
solve costs ``num_iter (2 D^2 + 4 C D)``; about 2 MFLOP at D = 128, C = 64, r = 30. The readout is a chunked
gated linear attention pass on (qt, k, v, g): state read ``2 D Dv``, state update ``2 D Dv`` and the intra-chunk
``Q K^T`` and ``A V`` products ``2 C D + 2 C Dv`` (about 0.1 MFLOP at D = Dv = 128).

Backward (implicit differentiation, spec section 4): one more solve of the same cost, plus about twice the
readout's forward cost (gradients of both operands of every product).
"""

from __future__ import annotations


def gka_solve_flops_per_token(D: int, num_iter: int, chunk: int = 64) -> int:
    """FLOPs of the Chebyshev solve for one token and one head (forward)."""
    return num_iter * (2 * D * D + 4 * chunk * D)


def gka_readout_flops_per_token(D: int, Dv: int, chunk: int = 64) -> int:
    """FLOPs of the chunked linear-attention readout for one token and one head (forward)."""
    return 4 * D * Dv + 2 * chunk * (D + Dv)


def gka_flops(B: int, T: int, H: int, D: int, Dv: int, num_iter: int, chunk: int = 64, backward: bool = False) -> int:
    """Total FLOPs of one GKA op call on ``[B, T, H, D]`` inputs (forward, or forward + backward)."""
    if min(B, T, H, D, Dv, chunk) <= 0 or num_iter < 0:
        raise ValueError(f"gka_flops: sizes must be positive, got B={B} T={T} H={H} D={D} Dv={Dv} chunk={chunk} num_iter={num_iter}")
    solve = gka_solve_flops_per_token(D, num_iter, chunk)
    readout = gka_readout_flops_per_token(D, Dv, chunk)
    per_token = solve + readout
    if backward:
        per_token += solve + 2 * readout
    return B * T * H * per_token
