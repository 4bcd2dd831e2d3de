"""Pure-PyTorch references of the baseline ops, token by token, any float dtype, any device.

Each function has the call signature and shape conventions of the flash-linear-attention 0.6.0 op it
mirrors (``fla.ops.<op>``), so a layer can call either one and ``gkabench check`` can compare them:

==========================  =====================================================================
``chunk_gated_delta_rule``  Gated DeltaNet: ``S = a S + beta k (v - S^T k)^T``, ``o = scale S^T q``
``chunk_gla``               GLA, per-channel decay: ``S = diag(exp(g)) S + k v^T``
``chunk_simple_gla``        scalar decay per head: ``S = exp(g) S + k v^T`` (Mamba2's SSD)
``chunk_mesa_net``          MesaNet: ``o = H_kv^T (H_kk + diag(lamb))^{-1} q`` by conjugate gradient
``mesa_net_exact``          the same with ``torch.linalg.solve`` (the oracle)
==========================  =====================================================================

Conventions (all ops): tensors ``[B, T, H, D]``; gates ``g`` are natural-log decays (<= 0); states have
fla's orientation ``[N, H, K, V]`` and are float32 (float64 for float64 inputs); ``cu_seqlens [N + 1]``
packs N sequences into a batch of 1 and no state crosses a boundary. Outputs are in ``v``'s dtype.
Arithmetic runs in the state dtype. Everything is differentiable by autograd. They are slow (a Python
loop over tokens) and meant for correctness, tiny CPU models and the float64 checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MESA_CG_EPS = 1e-5  # fla's mesa_net kernels add this to both CG denominators; mirrored for parity


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """States are float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def _check(op: str, q, k, v, per_head: dict, cu_seqlens, initial: dict) -> int:
    """Validate shapes; return N (number of sequences). Raises a one-line ValueError."""
    for name, t in (("q", q), ("k", k), ("v", v), *per_head.items()):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor")
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"{op}: q, k must be [B, T, H, K] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.ndim != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"{op}: v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    for name, t in per_head.items():
        want = (B, T, H) if t.ndim == 3 else (B, T, H, K)
        if tuple(t.shape) != want:
            raise ValueError(f"{op}: {name} must be {list(want)}, got {list(t.shape)}")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch must be 1 (packed sequences), got B={B}")
        b = cu_seqlens.tolist()
        if cu_seqlens.ndim != 1 or len(b) < 2 or b[0] != 0 or b[-1] != T or any(y < x for x, y in zip(b, b[1:])):
            raise ValueError(f"{op}: cu_seqlens must be 1-D, start at 0, end at T={T} and never decrease, got {b}")
        N = len(b) - 1
    for name, (t, shape) in initial.items():
        if t is not None and tuple(t.shape) != (N, *shape):
            raise ValueError(f"{op}: {name} must be {[N, *shape]}, got {list(t.shape)}")
    return N


def _segments(B: int, T: int, cu_seqlens) -> list[tuple[int, int, int]]:
    """``[(row, bos, eos)]`` per sequence, in state order."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    c = cu_seqlens.tolist()
    return [(0, c[i], c[i + 1]) for i in range(len(c) - 1)]


def _scan(
    step: Callable,
    seqs: tuple[torch.Tensor, ...],
    states: tuple[torch.Tensor, ...],
    out_dim: int,
    cu_seqlens,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``step(inputs_at_t, states) -> (o_t, states)`` over time. seqs are ``[B, T, H, ...]``, states
    ``[N, H, ...]``; without cu_seqlens all rows advance together, with it one packed sequence at a time."""
    B, T = seqs[0].shape[:2]
    if cu_seqlens is None:
        outs = []
        for t in range(T):
            o_t, states = step(tuple(s[:, t] for s in seqs), states)
            outs.append(o_t)
        o = torch.stack(outs, 1) if outs else seqs[0].new_zeros(B, 0, seqs[0].shape[2], out_dim)
        return o, states
    outs, finals = [], []
    for n, (_, bos, eos) in enumerate(_segments(B, T, cu_seqlens)):
        st = tuple(s[n : n + 1] for s in states)
        for t in range(bos, eos):
            o_t, st = step(tuple(s[:, t] for s in seqs), st)
            outs.append(o_t)
        finals.append(st)
    o = torch.stack(outs, 1) if outs else seqs[0].new_zeros(1, 0, seqs[0].shape[2], out_dim)
    return o, tuple(torch.cat(parts, 0) for parts in zip(*finals))


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule (mirrors ``fla.ops.gated_delta_rule.chunk_gated_delta_rule``).

    Per token and head, with ``a = exp(g)``::

        S = a * S ;  S = S + k (beta * (v - S^T k))^T ;  o = scale * S^T q

    Args:
        q, k: ``[B, T, H, K]`` (the caller L2-normalises them, or pass ``use_qk_l2norm_in_kernel=True``).
        v: ``[B, T, H, V]``. g: ``[B, T, H]`` natural-log decay. beta: ``[B, T, H]`` in [0, 2].
        scale: default ``K ** -0.5``. initial_state: ``[N, H, K, V]``.
        cu_seqlens: ``[N + 1]`` int offsets (then B = 1).

    Returns:
        ``o [B, T, H, V]`` in v's dtype; the final state ``[N, H, K, V]`` (float32, float64 for float64
        inputs) when ``output_final_state`` else None.
    """
    N = _check("chunk_gated_delta_rule", q, k, v, {"g": g, "beta": beta}, cu_seqlens,
               {"initial_state": (initial_state, (q.shape[2], q.shape[3], v.shape[3]))})  # fmt: skip
    cdt = state_dtype_for(q.dtype)
    qc, kc, vc, gc, bc = (t.to(cdt) for t in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        qc, kc = _l2norm(qc), _l2norm(kc)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    s0 = initial_state.to(cdt) if initial_state is not None else qc.new_zeros(N, H, K, V)

    def step(x, states):
        q_t, k_t, v_t, g_t, b_t = x
        (s,) = states
        s = s * g_t.exp()[..., None, None]
        pred = (k_t.unsqueeze(-1) * s).sum(-2)  # S^T k, [n, H, V]
        s = s + k_t.unsqueeze(-1) * (b_t.unsqueeze(-1) * (v_t - pred)).unsqueeze(-2)
        return scale * (q_t.unsqueeze(-1) * s).sum(-2), (s,)

    o, (s,) = _scan(step, (qc, kc, vc, gc, bc), (s0,), V, cu_seqlens)
    return o.to(v.dtype), (s if output_final_state else None)


def _linear_attention(op, q, k, v, decay_fn, g_shape_ok, scale, initial_state, output_final_state, cu_seqlens, g):
    N = _check(op, q, k, v, {"g": g}, cu_seqlens, {"initial_state": (initial_state, (q.shape[2], q.shape[3], v.shape[3]))})
    if not g_shape_ok(g):
        raise ValueError(f"{op}: g has the wrong rank, got {list(g.shape)}")
    cdt = state_dtype_for(q.dtype)
    qc, kc, vc, gc = (t.to(cdt) for t in (q, k, v, g))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    s0 = initial_state.to(cdt) if initial_state is not None else qc.new_zeros(N, H, K, V)

    def step(x, states):
        q_t, k_t, v_t, g_t = x
        (s,) = states
        s = s * decay_fn(g_t) + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        return scale * (q_t.unsqueeze(-1) * s).sum(-2), (s,)

    o, (s,) = _scan(step, (qc, kc, vc, gc), (s0,), V, cu_seqlens)
    return o.to(v.dtype), (s if output_final_state else None)


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention with a per-key-channel decay (mirrors ``fla.ops.gla.chunk_gla``).

    ``S = diag(exp(g_t)) S + k_t v_t^T``, ``o_t = scale * S^T q_t``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; g: ``[B, T, H, K]`` natural-log decay.
        scale: default ``K ** -0.5``. initial_state: ``[N, H, K, V]``. cu_seqlens: ``[N + 1]``.

    Returns:
        ``o [B, T, H, V]`` in v's dtype; final state ``[N, H, K, V]`` or None.
    """
    return _linear_attention("chunk_gla", q, k, v, lambda g_t: g_t.exp().unsqueeze(-1), lambda g: g.ndim == 4,
                             scale, initial_state, output_final_state, cu_seqlens, g)  # fmt: skip


def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear attention with one scalar decay per token and head (mirrors ``fla.ops.simple_gla.chunk_simple_gla``).

    ``S = exp(g_t) S + k_t v_t^T``, ``o_t = scale * S^T q_t``. Mamba2's SSD is this op with ``q = C``,
    ``k = dt * B``, ``v = x``, ``g = dt * A`` and ``scale = 1`` (plus the ``D * x`` skip, outside the op).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: ``[B, T, H]`` natural-log decay, or g_gamma: ``[H]`` a constant per-head log decay (one of them).
        scale: default ``K ** -0.5``. initial_state: ``[N, H, K, V]``. cu_seqlens: ``[N + 1]``.

    Returns:
        ``o [B, T, H, V]`` in v's dtype; final state ``[N, H, K, V]`` or None.
    """
    if (g is None) == (g_gamma is None):
        raise ValueError("chunk_simple_gla: pass exactly one of g [B, T, H] and g_gamma [H]")
    if g is None:
        g = g_gamma.to(q.dtype if q.dtype == torch.float64 else torch.float32).expand(*q.shape[:3])
    return _linear_attention("chunk_simple_gla", q, k, v, lambda g_t: g_t.exp()[..., None, None], lambda g: g.ndim == 3,
                             scale, initial_state, output_final_state, cu_seqlens, g)  # fmt: skip


def _cg_steps(h_kk: torch.Tensor, lamb: torch.Tensor, rhs: torch.Tensor, num_iter: int, eps: float) -> torch.Tensor:
    """``num_iter`` CG steps from ``x = 0`` on ``(H + diag(lamb)) x = rhs``, ``eps`` added to both denominators."""

    def apply_a(p):
        return (p.unsqueeze(-1) * h_kk).sum(-2) + lamb * p  # H is symmetric: p^T H = (H p)^T

    x = torch.zeros_like(rhs)
    r = rhs
    p = r
    delta = (r * r).sum(-1)
    for _ in range(num_iter):
        ap = apply_a(p)
        alpha = delta / ((p * ap).sum(-1) + eps)
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * ap
        delta_new = (r * r).sum(-1)
        p = r + (delta_new / (delta + eps)).unsqueeze(-1) * p
        delta = delta_new
    return x


class _MesaCGSolve(torch.autograd.Function):
    """CG solve whose backward is implicit differentiation with the same CG, as fla's chunk_mesa_net backward:
    ``drhs = CG(A, dx)``, ``dH = -x drhs^T``, ``dlamb = -sum(x * drhs)``. Differentiating through the truncated
    iterations instead gives another gradient when CG has not converged (session 3: lamb's gradient 33% apart in
    a layer), so parity with fla needs this form."""

    @staticmethod
    def forward(ctx, h_kk, lamb, rhs, num_iter, eps):
        x = _cg_steps(h_kk, lamb, rhs, num_iter, eps)
        ctx.save_for_backward(h_kk, lamb, x)
        ctx.num_iter, ctx.eps = num_iter, eps
        return x

    @staticmethod
    def backward(ctx, dx):
        h_kk, lamb, x = ctx.saved_tensors
        drhs = _cg_steps(h_kk, lamb, dx, ctx.num_iter, ctx.eps)
        dh = -x.unsqueeze(-1) * drhs.unsqueeze(-2)  # [n, H, K, K]
        dlamb = -(x * drhs).reshape(-1, *lamb.shape).sum(0)
        return dh, dlamb, drhs, None, None


def mesa_cg_solve(h_kk: torch.Tensor, lamb: torch.Tensor, rhs: torch.Tensor, num_iter: int, eps: float = MESA_CG_EPS):
    """``(H + diag(lamb))^{-1} rhs`` by ``num_iter`` conjugate-gradient steps from ``x = 0``, with fla's
    ``eps`` added to both denominators (as its chunk kernel does). h_kk ``[n, H, K, K]``, lamb ``[H, K]``,
    rhs ``[n, H, K]`` -> ``[n, H, K]``. Gradients by implicit differentiation with the same CG (fla's backward);
    gradients w.r.t. the symmetric ``h_kk`` are meaningful up to their symmetric part."""
    return _MesaCGSolve.apply(h_kk, lamb, rhs, num_iter, eps)


def mesa_exact_solve(h_kk: torch.Tensor, lamb: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(H + diag(lamb))^{-1} rhs`` by ``torch.linalg.solve``; shapes as :func:`mesa_cg_solve`."""
    return torch.linalg.solve(h_kk + torch.diag_embed(lamb), rhs.unsqueeze(-1)).squeeze(-1)


def _mesa(op, q, k, v, g, beta, lamb, h_kk_init, h_kv_init, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens, solve):
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    N = _check(op, q, k, v, {"g": g, "beta": beta}, cu_seqlens,
               {"h_kk_init": (h_kk_init, (H, K, K)), "h_kv_init": (h_kv_init, (H, K, V))})  # fmt: skip
    if tuple(lamb.shape) != (H, K):
        raise ValueError(f"{op}: lamb must be [H, K] = [{H}, {K}], got {list(lamb.shape)}")
    cdt = state_dtype_for(q.dtype)
    qc, kc, vc, gc, bc = (t.to(cdt) for t in (q, k, v, g, beta))
    lc = lamb.to(cdt)
    if use_qk_l2norm_in_kernel:
        qc, kc = _l2norm(qc), _l2norm(kc)
    kk0 = h_kk_init.to(cdt) if h_kk_init is not None else qc.new_zeros(N, H, K, K)
    kv0 = h_kv_init.to(cdt) if h_kv_init is not None else qc.new_zeros(N, H, K, V)

    def step(x, states):
        q_t, k_t, v_t, g_t, b_t = x
        kk, kv = states
        a = g_t.exp()[..., None, None]
        kb = (b_t.unsqueeze(-1) * k_t).unsqueeze(-1)
        kk = a * kk + kb * k_t.unsqueeze(-2)
        kv = a * kv + kb * v_t.unsqueeze(-2)
        x_t = solve(kk, lc, q_t)
        return (x_t.unsqueeze(-1) * kv).sum(-2), (kk, kv)

    o, (kk, kv) = _scan(step, (qc, kc, vc, gc, bc), (kk0, kv0), V, cu_seqlens)
    if not output_final_state:
        kk = kv = None
    return o.to(v.dtype), kk, kv


def chunk_mesa_net(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    lamb: torch.Tensor,
    h_kk_init: torch.Tensor | None = None,
    h_kv_init: torch.Tensor | None = None,
    output_final_state: bool = False,
    max_CG_iteration: int = 30,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """MesaNet (mirrors ``fla.ops.mesa_net.chunk_mesa_net``), the solve by conjugate gradient.

    Per token and head, with ``a = exp(g)``::

        H_kk = a H_kk + beta k k^T ;  H_kv = a H_kv + beta k v^T
        x = (H_kk + diag(lamb))^{-1} q      (max_CG_iteration CG steps from x = 0, as fla's chunk kernel)
        o = H_kv^T x                        (no scale)

    Args:
        q, k: ``[B, T, H, K]`` (L2-normalised by the caller, or ``use_qk_l2norm_in_kernel=True``).
        v: ``[B, T, H, V]`` (fla's kernel needs V = K; the reference does not).
        g, beta: ``[B, T, H]``; lamb: ``[H, K]`` (> 0). h_kk_init ``[N, H, K, K]``, h_kv_init ``[N, H, K, V]``.

    Returns:
        ``(o [B, T, H, V] in v's dtype, h_kk, h_kv)``; the states are None unless ``output_final_state``.
    """
    return _mesa("chunk_mesa_net", q, k, v, g, beta, lamb, h_kk_init, h_kv_init, output_final_state,
                 use_qk_l2norm_in_kernel, cu_seqlens,
                 lambda kk, lam, rhs: mesa_cg_solve(kk, lam, rhs, max_CG_iteration))  # fmt: skip


def mesa_net_exact(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    lamb: torch.Tensor,
    h_kk_init: torch.Tensor | None = None,
    h_kv_init: torch.Tensor | None = None,
    output_final_state: bool = False,
    max_CG_iteration: int = 30,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`chunk_mesa_net` with an exact ``torch.linalg.solve`` per token (``max_CG_iteration`` ignored).
    The oracle; run it in float64."""
    return _mesa("mesa_net_exact", q, k, v, g, beta, lamb, h_kk_init, h_kv_init, output_final_state,
                 use_qk_l2norm_in_kernel, cu_seqlens, mesa_exact_solve)  # fmt: skip
