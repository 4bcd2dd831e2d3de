"""Pure-PyTorch references of the GKA op: token-by-token recurrence, any float dtype, any device.

``gka_reference`` runs exactly the Chebyshev iteration of gka-spec.md section 2; ``gka_exact`` replaces it
by ``torch.linalg.solve`` and is the oracle of every test. Both are differentiable by autograd, so their
gradients are the ground truth for the Triton backward. They are slow (a Python loop over tokens) and meant
for correctness, tiny CPU models and the float64 checks of ``gkabench check``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import DEFAULT_NUM_ITER, DEFAULT_RIDGE, NORM_FLOOR, GKAState, default_scale, run_per_sequence

Solver = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def frobenius_norms(h_kk: torch.Tensor) -> torch.Tensor:
    """``||H||_F`` floored at ``NORM_FLOOR``. h_kk ``[..., D, D]`` -> ``[...]``.

    The floor sits inside the square root so the gradient is 0 (not NaN) for an all-zero state.
    """
    return h_kk.square().sum((-2, -1)).clamp_min(NORM_FLOOR**2).sqrt()


def solve_chebyshev(h_kk: torch.Tensor, rhs: torch.Tensor, ridge: float, num_iter: int = DEFAULT_NUM_ITER) -> torch.Tensor:
    """Approximate ``(H + lam I)^{-1} rhs`` with ``lam = ridge * ||H||_F`` by ``num_iter`` Chebyshev steps.

    h_kk ``[..., D, D]`` symmetric PSD, rhs ``[..., D]``; returns ``[..., D]`` in rhs's dtype.
    Eigenvalue bounds ``mu = lam``, ``L = ||H||_F + lam`` (spec section 2; ``w_0 = 2``).
    """
    frob = frobenius_norms(h_kk)
    lam = ridge * frob
    mu, big_l = lam, frob + lam
    rho = (big_l - mu) / (big_l + mu)
    step = (2.0 / (big_l + mu)).unsqueeze(-1)
    quarter_rho2 = (rho * rho / 4.0).unsqueeze(-1)
    lam = lam.unsqueeze(-1)

    def apply_a(x: torch.Tensor) -> torch.Tensor:
        return (h_kk @ x.unsqueeze(-1)).squeeze(-1) + lam * x

    x_prev = torch.zeros_like(rhs)
    x = step * rhs
    w = torch.full_like(quarter_rho2, 2.0)
    for _ in range(num_iter):
        w = 1.0 / (1.0 - quarter_rho2 * w)
        x, x_prev = w * (x - step * (apply_a(x) - rhs)) + (1.0 - w) * x_prev, x
    return x


def solve_exact(h_kk: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(H + ridge * ||H||_F * I)^{-1} rhs`` by ``torch.linalg.solve``; same shapes as :func:`solve_chebyshev`."""
    lam = ridge * frobenius_norms(h_kk)
    eye = torch.eye(h_kk.shape[-1], dtype=h_kk.dtype, device=h_kk.device)
    a = h_kk + lam[..., None, None] * eye
    return torch.linalg.solve(a, rhs.unsqueeze(-1)).squeeze(-1)


def _recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    alpha: torch.Tensor,
    h_kk: torch.Tensor,
    h_kv: torch.Tensor,
    solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of sequences, token by token. q, k ``[N, T, H, D]``, v ``[N, T, H, Dv]``, g, alpha ``[N, T, H]``,
    states ``[N, H, D, D]`` / ``[N, H, D, Dv]``, everything in the compute dtype. Returns (o, h_kk, h_kv)."""
    outputs = []
    for t in range(q.shape[1]):
        gamma = g[:, t].exp()[..., None, None]
        k_t, v_t, q_t = k[:, t], v[:, t], q[:, t]
        h_kk = gamma * h_kk + k_t.unsqueeze(-1) * k_t.unsqueeze(-2)
        h_kv = gamma * h_kv + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        x_t = solve(h_kk, q_t)
        qt_t = q_t + alpha[:, t].unsqueeze(-1) * (x_t - q_t)
        outputs.append(scale * (qt_t.unsqueeze(-2) @ h_kv).squeeze(-2))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)
    return o, h_kk, h_kv


def _run(
    q, k, v, g, alpha, *, solve_fn: Solver, num_iter, ridge, scale, initial_state, output_final_state, cu_seqlens
) -> tuple[torch.Tensor, GKAState | None]:

    def solve(h: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        return solve_fn(h, rhs, ridge)

    def runner(q, k, v, g, alpha, h_kk, h_kv):
        return _recurrence(q, k, v, g, alpha, h_kk, h_kv, solve, default_scale(q.shape[-1], scale))

    return run_per_sequence(
        runner, q, k, v, g, alpha, num_iter=num_iter, ridge=ridge, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )  # fmt: skip


def gka_reference(
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
) -> tuple[torch.Tensor, GKAState | None]:
    """GKA by token-by-token recurrence with ``num_iter`` Chebyshev steps per token (spec sections 1-2).

    Args:
        q, k: ``[B, T, H, D]``, used as given (the layer L2-normalises them).
        v: ``[B, T, H, Dv]``; q, k, v share one float dtype.
        g: ``[B, T, H]`` natural-log decay (<= 0); alpha: ``[B, T, H]`` in [0, 1].
        scale: readout scale, default ``D ** -0.5``.
        initial_state: ``(h_kk [N, H, D, D], h_kv [N, H, D, Dv])``.
        cu_seqlens: ``[N + 1]`` int offsets of packed sequences (then B must be 1).

    Returns:
        ``o [B, T, H, Dv]`` in v's dtype, and the final state (float32; float64 for float64 inputs) when
        ``output_final_state`` else None. Arithmetic runs in float32 (float64 for float64 inputs).
    """
    return _run(
        q, k, v, g, alpha,
        solve_fn=lambda h, rhs, a: solve_chebyshev(h, rhs, a, num_iter),
        num_iter=num_iter, ridge=ridge, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )  # fmt: skip


def gka_exact(
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
) -> tuple[torch.Tensor, GKAState | None]:
    """Same signature and shapes as :func:`gka_reference`, with an exact ``torch.linalg.solve`` per token
    (``num_iter`` is ignored). The oracle for every test; run it in float64."""
    return _run(
        q, k, v, g, alpha,
        solve_fn=solve_exact,
        num_iter=num_iter, ridge=ridge, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )  # fmt: skip
