"""The GKA op's references (CPU, float64): Chebyshev vs exact, gradients, alpha = 0, state passing, varlen,
degenerate states and input validation. Tolerances come from the Chebyshev bound of spec section 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gkabench.kernels.gka import (
    chebyshev_error_bound,
    gka,
    gka_chunked,
    gka_exact,
    gka_reference,
    solve_chebyshev,
    solve_exact,
)

F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def make_inputs(B=2, T=17, H=2, D=8, Dv=6, dtype=F64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, D, generator=gen, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, Dv, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype) + 4)
    alpha = torch.rand(B, T, H, generator=gen, dtype=dtype)
    ts = [q, k, v, g, alpha]
    if requires_grad:
        ts = [t.clone().requires_grad_(True) for t in ts]
    return ts


def test_reference_80_iterations_matches_exact():
    q, k, v, g, a = make_inputs()
    o_ref, (kk_r, kv_r) = gka_reference(q, k, v, g, a, num_iter=80, output_final_state=True)
    o_ex, (kk_e, kv_e) = gka_exact(q, k, v, g, a, output_final_state=True)
    assert rel(o_ref, o_ex) <= 1e-7
    assert torch.allclose(kk_r, kk_e) and torch.allclose(kv_r, kv_e)
    assert o_ref.dtype == F64 and kk_r.dtype == F64


@pytest.mark.parametrize("num_iter", [10, 30])
def test_chebyshev_solve_within_bound(num_iter):
    gen = torch.Generator().manual_seed(1)
    D = 16
    keys = F.normalize(torch.randn(64, 40, D, generator=gen, dtype=F64), dim=-1)
    decay = torch.rand(64, 40, 1, 1, generator=gen, dtype=F64)
    h = (decay * keys.unsqueeze(-1) * keys.unsqueeze(-2)).sum(1)  # 64 random PSD states, rank <= D
    rhs = torch.randn(64, D, generator=gen, dtype=F64)
    x = solve_chebyshev(h, rhs, 0.02, num_iter)
    x_exact = solve_exact(h, rhs, 0.02)
    errs = (x - x_exact).norm(dim=-1) / x_exact.norm(dim=-1)
    bound = chebyshev_error_bound(num_iter, 0.02)
    assert errs.max().item() <= bound * (1 + 1e-6)
    assert errs.max().item() > bound * 1e-3  # the bound is not vacuous: the solve really is approximate


def test_output_at_30_iterations_close_to_exact():
    q, k, v, g, a = make_inputs(T=40)
    o30, _ = gka_reference(q, k, v, g, a, num_iter=30)
    o_ex, _ = gka_exact(q, k, v, g, a)
    # o is linear in x; per token ||o - o*|| <= scale ||U|| alpha ||x - x*||; the mix with q keeps the
    # relative error of o below a few times the solve's bound (3.2e-4 at r = 30).
    assert rel(o30, o_ex) <= 5 * chebyshev_error_bound(30)


def test_gradients_match_exact():
    ins_r = make_inputs(B=1, T=9, H=2, D=6, Dv=5, requires_grad=True, seed=3)
    ins_e = [t.detach().clone().requires_grad_(True) for t in ins_r]
    w = torch.randn(1, 9, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    o_r, _ = gka_reference(*ins_r, num_iter=80)
    o_e, _ = gka_exact(*ins_e)
    (o_r * w).sum().backward()
    (o_e * w).sum().backward()
    for name, tr, te in zip("q k v g alpha".split(), ins_r, ins_e):
        assert rel(tr.grad, te.grad) <= 1e-6, name


def test_gradcheck_exact_small():
    ins = make_inputs(B=1, T=4, H=1, D=3, Dv=2, requires_grad=True, seed=5)
    assert torch.autograd.gradcheck(lambda *t: gka_exact(*t)[0], ins, eps=1e-6, atol=1e-7)


def test_alpha_zero_is_decayed_linear_attention():
    q, k, v, g, _ = make_inputs()
    a = torch.zeros_like(g)
    o, _ = gka_reference(q, k, v, g, a, num_iter=5)
    # o_t = scale * sum_{i<=t} exp(G_t - G_i) (q_t . k_i) v_i
    G = g.cumsum(1)
    D = q.shape[-1]
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    decay = (G.transpose(1, 2)[..., :, None] - G.transpose(1, 2)[..., None, :]).exp()
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()
    att = torch.where(causal, scores * decay, torch.zeros((), dtype=F64))
    expected = D**-0.5 * torch.einsum("bhts,bshv->bthv", att, v)
    assert rel(o, expected) <= 1e-12


def test_split_with_state_equals_whole():
    q, k, v, g, a = make_inputs(T=20)
    o, (kk, kv) = gka_reference(q, k, v, g, a, output_final_state=True)
    o1, s1 = gka_reference(*(t[:, :7] for t in (q, k, v, g, a)), output_final_state=True)
    o2, (kk2, kv2) = gka_reference(*(t[:, 7:] for t in (q, k, v, g, a)), initial_state=s1, output_final_state=True)
    assert rel(torch.cat([o1, o2], 1), o) <= 1e-13
    assert rel(kk2, kk) <= 1e-13 and rel(kv2, kv) <= 1e-13


def test_initial_state_gradient_matches_exact():
    q, k, v, g, a = make_inputs(B=1, T=5, H=1, D=4, Dv=3, seed=7)
    gen = torch.Generator().manual_seed(8)
    keys = F.normalize(torch.randn(1, 1, 6, 4, generator=gen, dtype=F64), dim=-1)
    kk0 = (keys.unsqueeze(-1) * keys.unsqueeze(-2)).sum(2).requires_grad_(True)
    kv0 = torch.randn(1, 1, 4, 3, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s0, s1: gka_exact(q, k, v, g, a, initial_state=(s0, s1))[0], (kk0, kv0), eps=1e-6, atol=1e-7
    )


def test_cu_seqlens_equals_separate_runs():
    q, k, v, g, a = make_inputs(B=1, T=23)
    cu = torch.tensor([0, 5, 5, 14, 23], dtype=torch.int32)
    gen = torch.Generator().manual_seed(9)
    s0 = (torch.rand(4, 2, 8, 8, generator=gen, dtype=F64), torch.randn(4, 2, 8, 6, generator=gen, dtype=F64))
    s0 = (s0[0] @ s0[0].transpose(-1, -2), s0[1])
    o, (kk, kv) = gka_reference(q, k, v, g, a, cu_seqlens=cu, initial_state=s0, output_final_state=True)
    bounds = cu.tolist()
    for n in range(4):
        sl = slice(bounds[n], bounds[n + 1])
        o_n, (kk_n, kv_n) = gka_reference(
            *(t[:, sl] for t in (q, k, v, g, a)), initial_state=(s0[0][n : n + 1], s0[1][n : n + 1]), output_final_state=True
        )
        if bounds[n + 1] > bounds[n]:
            assert rel(o[:, sl], o_n) <= 1e-13
        assert torch.allclose(kk[n], kk_n[0]) and torch.allclose(kv[n], kv_n[0])


def test_zero_keys_give_finite_outputs_and_gradients():
    q, k, v, g, a = make_inputs(B=1, T=6, requires_grad=False)
    k = torch.zeros_like(k)
    k[:, 3:] = F.normalize(torch.randn(1, 3, 2, 8, dtype=F64), dim=-1)
    k.requires_grad_(True)
    for fn in (gka_reference, gka_exact):
        o, _ = fn(q, k, v, g, a)
        assert torch.isfinite(o).all()
        assert o[:, :3].abs().max() == 0  # U = 0 while no key has arrived
        (gk,) = torch.autograd.grad(o.sum(), k)
        assert torch.isfinite(gk).all()


def test_float32_and_bfloat16_inputs():
    q, k, v, g, a = make_inputs(T=12)
    o_ex, _ = gka_exact(q, k, v, g, a)
    for dt, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        o, (kk, kv) = gka_reference(*(t.to(dt) for t in (q, k, v)), g, a, output_final_state=True)
        assert o.dtype == dt and kk.dtype == torch.float32
        assert rel(o.double(), o_ex) <= tol


def test_dispatch_on_cpu_uses_torch_chunks():
    ins = make_inputs(T=5)
    o1, _ = gka(*ins)
    o2, _ = gka_chunked(*ins)
    assert torch.equal(o1, o2)
    o3, _ = gka(*ins, backend="reference")
    assert torch.equal(o3, gka_reference(*ins)[0])
    with pytest.raises(ValueError, match="CUDA"):
        gka(*ins, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        gka(*ins, backend="magic")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda q, k, v, g, a: (q[0], k, v, g, a), r"q must be \[B, T, H, D\]"),
        (lambda q, k, v, g, a: (q, k[..., :4], v, g, a), "k must have q's shape"),
        (lambda q, k, v, g, a: (q, k, v[:, :3], g, a), "v must be"),
        (lambda q, k, v, g, a: (q, k, v, g[..., :1], a), "g must be"),
        (lambda q, k, v, g, a: (q, k, v, g, a[:, :, :, None]), "alpha must be"),
        (lambda q, k, v, g, a: (q.float(), k, v, g, a), "share one dtype"),
        (lambda q, k, v, g, a: (q.long(), k, v, g, a), "floating-point"),
    ],
)
def test_bad_inputs_raise_value_error(mutate, match):
    ins = mutate(*make_inputs(T=4))
    with pytest.raises(ValueError, match=match):
        gka_reference(*ins)


def test_bad_cu_seqlens_and_state_raise():
    q, k, v, g, a = make_inputs(B=2, T=6)
    with pytest.raises(ValueError, match="batch must be 1"):
        gka_reference(q, k, v, g, a, cu_seqlens=torch.tensor([0, 6]))
    q1, k1, v1, g1, a1 = (t[:1] for t in (q, k, v, g, a))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        gka_reference(q1, k1, v1, g1, a1, cu_seqlens=torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match="initial_state must be"):
        gka_reference(q, k, v, g, a, initial_state=(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8)))
    with pytest.raises(ValueError, match="ridge must be a finite number > 0"):
        gka_reference(q, k, v, g, a, ridge=0.0)


@pytest.mark.parametrize("T, chunk", [(150, 64), (37, 16), (64, 64), (1, 64)])
def test_torch_chunked_equals_reference(T, chunk):
    q, k, v, g, a = make_inputs(B=2, T=T, H=2, D=8, Dv=6, seed=T)
    gen = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(2, 2, 12, 8, generator=gen, dtype=F64), dim=-1)
    s0 = ((keys.unsqueeze(-1) * keys.unsqueeze(-2)).sum(2), torch.randn(2, 2, 8, 6, generator=gen, dtype=F64))
    o_r, (kk_r, kv_r) = gka_reference(q, k, v, g, a, initial_state=s0, output_final_state=True)
    o_c, (kk_c, kv_c) = gka_chunked(q, k, v, g, a, initial_state=s0, output_final_state=True, chunk_size=chunk)
    assert rel(o_c, o_r) <= 1e-12 and rel(kk_c, kk_r) <= 1e-12 and rel(kv_c, kv_r) <= 1e-12


def test_torch_chunked_varlen_and_gradients():
    ins = make_inputs(B=1, T=50, H=2, D=6, Dv=5, seed=11, requires_grad=True)
    cu = torch.tensor([0, 20, 21, 50])
    o_c, _ = gka_chunked(*ins, cu_seqlens=cu, chunk_size=16)
    grads_c = torch.autograd.grad(o_c.square().sum(), ins)
    o_r, _ = gka_reference(*ins, cu_seqlens=cu)
    grads_r = torch.autograd.grad(o_r.square().sum(), ins)
    assert rel(o_c, o_r) <= 1e-12
    for gc, gr in zip(grads_c, grads_r):
        assert rel(gc, gr) <= 1e-11


def test_torch_chunked_zero_keys_finite():
    q, k, v, g, a = make_inputs(B=1, T=10)
    k = torch.zeros_like(k).requires_grad_(True)
    o, _ = gka_chunked(q, k, v, g, a)
    assert torch.isfinite(o).all() and o.abs().max() == 0
    (gk,) = torch.autograd.grad(o.sum(), k)
    assert torch.isfinite(gk).all()


def test_torch_chunked_state_gradients_match_reference():
    q, k, v, g, a = make_inputs(B=1, T=12, H=1, D=5, Dv=4, seed=21)
    gen = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(1, 1, 9, 5, generator=gen, dtype=F64), dim=-1)
    kk0 = (keys.unsqueeze(-1) * keys.unsqueeze(-2)).sum(2).requires_grad_(True)
    kv0 = torch.randn(1, 1, 5, 4, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(1, 12, 1, 4, generator=gen, dtype=F64)
    grads = []
    for fn in (gka_reference, gka_chunked):
        o, (kk, kv) = fn(q, k, v, g, a, initial_state=(kk0, kv0), output_final_state=True)
        grads.append(torch.autograd.grad((o * w).sum() + kk.sum() + kv.square().sum(), (kk0, kv0)))
    for gr, gc in zip(*grads):
        assert rel(gc, gr) <= 1e-11


def test_more_user_errors_are_value_errors():
    q, k, v, g, a = make_inputs(B=1, T=6)
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D"):
        gka_reference(q, k, v, g, a, cu_seqlens=[0, 2, 6])
    with pytest.raises(ValueError, match="pair of tensors"):
        gka_reference(q, k, v, g, a, initial_state=(None, None))
    for bad in (float("inf"), float("nan"), -1.0, "x"):
        with pytest.raises(ValueError, match="ridge"):
            gka_chunked(q, k, v, g, a, ridge=bad)
    with pytest.raises(ValueError, match="num_iter"):
        gka_reference(q, k, v, g, a, num_iter=True)
    with pytest.raises(ValueError, match="chunk_size"):
        gka_chunked(q, k, v, g, a, chunk_size=0)
