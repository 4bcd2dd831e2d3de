"""``gkabench check``: every fast path of this machine against its float64 reference, forward and gradients.

Each case draws fresh random inputs (never zeros), runs the fast op in the dtype under test, runs the float64
reference on the very same (already rounded) inputs, and compares outputs and the gradients of a random
projection of them by relative error ``||a - b|| / ||b||``. Tolerances:

- GKA vs ``gka_exact``: fp32 inputs 1e-3 forward (5e-3 gradients) at 30 Chebyshev steps (the solve bound is
  3.2e-4) and 1e-5 forward (1e-4 gradients) at 80;
  bf16 inputs 1e-2 (forward and gradients). Decode (step by step from a state) vs the chunked path: same bounds.
- Baselines (fla Triton ops) vs our float64 recurrences: fp32 2e-3 (tf32 dots), bf16 1e-2 forward / 2e-2 gradients;
  MesaNet 1e-2 / 2e-2 in both dtypes (fla computes it in fp16 / bf16 whatever the input dtype: :func:`mesanet_cases`).
- Attention (torch SDPA) vs an explicit float64 softmax: fp32 1e-3, bf16 1e-2.

A fla op that refuses to run (its Hopper guard for Triton < 3.7.1) is reported as ``refused``; with
``lift_guard=True`` it runs anyway and is judged like the rest, which is the evidence needed before a benchmark
may lift the guard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

F64 = torch.float64


@dataclass
class CheckRow:
    op: str
    case: str
    dtype: str
    quantity: str
    rel_err: float | None
    tol: float | None
    status: str  # pass | FAIL | refused | error | skip
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Case:
    op: str
    case: str
    dtype: torch.dtype
    run: Callable[[], list[tuple[str, float, float]]]  # -> [(quantity, rel_err, tol)]
    tags: list[str] = field(default_factory=list)
    note: str = ""  # printed in every row of the case (e.g. why its tolerance differs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    denom = b.norm()
    return ((a - b).norm() / denom).item() if denom > 0 else (a - b).norm().item()


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def compare_fwd_bwd(
    fast: Callable[..., tuple[torch.Tensor, ...]],
    ref: Callable[..., tuple[torch.Tensor, ...]],
    inputs: dict[str, torch.Tensor],
    grad_names: list[str],
    out_names: list[str],
    tol_fwd: float,
    tol_bwd: float,
    seed: int,
    symmetric: tuple[str, ...] = (),
) -> list[tuple[str, float, float]]:
    """Run ``fast(**inputs)`` and ``ref(**float64 copies)``; compare outputs and gradients of a random projection.

    ``fast`` / ``ref`` return a tuple of tensors named by ``out_names`` (None entries are skipped). Gradients of the
    inputs named in ``symmetric`` (symmetric matrices in the last two dims, e.g. a ``k k^T`` state) are compared by
    their symmetric part: only that part acts on a symmetric perturbation, and implementations legitimately return
    ``G`` or ``G^T`` (session 3: fla's MesaNet and our reference differ so, a relative 1.4 apart before this)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    fast_in = {k: (v.detach().clone().requires_grad_(k in grad_names) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in inputs.items()}
    ref_in = {k: (v.detach().to(F64).requires_grad_(k in grad_names) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in inputs.items()}
    outs_fast = fast(**fast_in)
    outs_ref = ref(**ref_in)
    results = []
    loss_fast, loss_ref = 0.0, 0.0
    for name, of, orf in zip(out_names, outs_fast, outs_ref):
        if of is None or orf is None:
            continue
        results.append((name, rel_err(of, orf), tol_fwd))
        w = torch.randn(orf.shape, generator=gen, dtype=F64).to(orf.device)
        loss_fast = loss_fast + (of.double() * w).sum()
        loss_ref = loss_ref + (orf * w).sum()
    if grad_names:
        gf = torch.autograd.grad(loss_fast, [fast_in[n] for n in grad_names], allow_unused=True)
        gr = torch.autograd.grad(loss_ref, [ref_in[n] for n in grad_names], allow_unused=True)
        for name, a, b in zip(grad_names, gf, gr):
            if a is None or b is None:
                results.append((f"d{name}", float("inf") if b is not None else 0.0, tol_bwd))
            else:
                if name in symmetric:
                    a, b = (a + a.transpose(-1, -2)) / 2, (b + b.transpose(-1, -2)) / 2
                results.append((f"d{name}", rel_err(a, b), tol_bwd))
    return results


# ----------------------------------------------------------------------------------------------- inputs


def _randn(*shape, device, gen):
    return torch.randn(*shape, generator=gen, device="cpu").to(device)


def recurrent_inputs(B, T, H, K, V, device, seed, normalize=True, scalar_gate=True):
    """q, k, v standard normal (q, k L2-normalised), log decay logsigmoid(N(0,1) + 4), as in ANCHORS.md."""
    gen = torch.Generator().manual_seed(seed)
    q = _randn(B, T, H, K, device=device, gen=gen)
    k = _randn(B, T, H, K, device=device, gen=gen)
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = _randn(B, T, H, V, device=device, gen=gen)
    gshape = (B, T, H) if scalar_gate else (B, T, H, K)
    g = F.logsigmoid(_randn(*gshape, device=device, gen=gen) + 4)
    return q, k, v, g, gen


def random_psd_state(N, H, D, Dv, device, gen, rank=None, scale=4.0):
    keys = F.normalize(torch.randn(N, H, rank or 2 * D, D, generator=gen), dim=-1)
    h_kk = scale * torch.einsum("nhrd,nhre->nhde", keys, keys) / keys.shape[2]
    h_kv = torch.randn(N, H, D, Dv, generator=gen)
    return h_kk.to(device), h_kv.to(device)


# ----------------------------------------------------------------------------------------------- GKA


def gka_cases(device: torch.device) -> list[Case]:
    from .kernels.gka import gka, gka_exact, gka_reference

    cuda = device.type == "cuda"
    fast_backend = "triton" if cuda else "chunked"
    shapes = [
        ("B2 T100 H2 D64", dict(B=2, T=100, H=2, D=64, Dv=64), None, False),
        ("B1 T200 H2 D128 Dv64", dict(B=1, T=200, H=2, D=128, Dv=64), None, False),
        ("varlen 37+63+130 D128", dict(B=1, T=230, H=2, D=128, Dv=128), [0, 37, 100, 230], False),
        ("states in/out B2 T130 D64", dict(B=2, T=130, H=2, D=64, Dv=64), None, True),
    ]
    if not cuda:  # the CPU reference is slow: smaller shapes, same coverage
        shapes = [
            ("B2 T20 H2 D16", dict(B=2, T=20, H=2, D=16, Dv=16), None, False),
            ("varlen 7+13 D16", dict(B=1, T=20, H=2, D=16, Dv=8), [0, 7, 20], False),
            ("states in/out B2 T12 D16", dict(B=2, T=12, H=2, D=16, Dv=16), None, True),
        ]
    # (dtype, Chebyshev steps, forward tol, gradient tol). Gradients of the r-step solve differ from the exact
    # ones by a few times the solve bound (the reference itself shows 1.7e-3 on dh_kk at r = 30): 5e-3 there.
    settings = [(torch.float32, 30, 1e-3, 5e-3), (torch.float32, 80, 1e-5, 1e-4), (torch.bfloat16, 30, 1e-2, 1e-2)]
    cases = []
    for seed, (label, s, cu, states) in enumerate(shapes):
        for dtype, r, tol_f, tol_b in settings:
            def run(s=s, cu=cu, states=states, dtype=dtype, r=r, tol_f=tol_f, tol_b=tol_b, seed=seed):
                q, k, v, g, gen = recurrent_inputs(s["B"], s["T"], s["H"], s["D"], s["Dv"], device, seed)
                alpha = torch.rand(s["B"], s["T"], s["H"], generator=gen).to(device)
                inputs = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g, alpha=alpha)
                grad_names = ["q", "k", "v", "g", "alpha"]
                cu_t = torch.tensor(cu, dtype=torch.int32, device=device) if cu else None
                if states:
                    h_kk, h_kv = random_psd_state(s["B"], s["H"], s["D"], s["Dv"], device, gen)
                    inputs.update(h_kk=h_kk, h_kv=h_kv)
                    grad_names += ["h_kk", "h_kv"]

                def call(fn, **kw):
                    def f(q, k, v, g, alpha, h_kk=None, h_kv=None):
                        init = (h_kk, h_kv) if h_kk is not None else None
                        o, st = fn(q, k, v, g, alpha, num_iter=r, initial_state=init, output_final_state=True, cu_seqlens=cu_t, **kw)
                        return (o, *st)
                    return f

                return compare_fwd_bwd(
                    call(gka, backend=fast_backend), call(gka_exact), inputs, grad_names,
                    ["o", "h_kk_final", "h_kv_final"], tol_f, tol_b, seed,
                )  # fmt: skip

            cases.append(Case("gka" + ("" if cuda else " (torch chunked)"), f"{label} r={r}", dtype, run))
    # decode: step by step from a state equals the chunked path
    for dtype, r, tol_f, _ in settings[::2]:
        def run_decode(dtype=dtype, r=r, tol_f=tol_f):
            B, T, H, D = (4, 6, 2, 64) if cuda else (2, 5, 2, 16)
            q, k, v, g, gen = recurrent_inputs(B, T, H, D, D, device, 99)
            alpha = torch.rand(B, T, H, generator=gen).to(device)
            state = random_psd_state(B, H, D, D, device, gen)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            try:
                from .kernels.gka.decode import gka_decode
            except ImportError:
                def gka_decode(q, k, v, g, alpha, st, num_iter):
                    return gka_reference(q, k, v, g, alpha, num_iter=num_iter, initial_state=st, output_final_state=True)
            o_ex, _ = gka_exact(*(t.double() for t in (q, k, v, g, alpha)), initial_state=tuple(s.double() for s in state))
            st, outs = state, []
            with torch.no_grad():
                for t in range(T):
                    o_t, st = gka_decode(q[:, t:t+1], k[:, t:t+1], v[:, t:t+1], g[:, t:t+1], alpha[:, t:t+1], st, num_iter=r)
                    outs.append(o_t)
                o_chunk, _ = gka(q, k, v, g, alpha, num_iter=r, initial_state=state, backend=fast_backend)
            o_dec = torch.cat(outs, 1)
            return [("o decode vs exact", rel_err(o_dec, o_ex), tol_f), ("o decode vs chunked", rel_err(o_dec, o_chunk), tol_f)]

        # on CPU there is no decode kernel: the steps run through the token-by-token reference
        cases.append(Case("gka decode" + ("" if cuda else " (reference steps)"), f"steps from a state r={r}", dtype, run_decode))
    return cases


# ----------------------------------------------------------------------------------------------- attention


def attention_cases(device: torch.device) -> list[Case]:
    cases = []
    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 1e-2)):
        def run(dtype=dtype, tol=tol):
            B, T, H, D = (2, 300, 4, 128) if device.type == "cuda" else (2, 40, 2, 16)
            gen = torch.Generator().manual_seed(7)
            q, k, v = (torch.randn(B, H, T, D, generator=gen).to(device, dtype) for _ in range(3))

            def fast(q, k, v):
                return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)

            def ref(q, k, v):
                s = (q @ k.transpose(-1, -2)) * D**-0.5
                s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=s.device).tril(), float("-inf"))
                return (s.softmax(-1) @ v,)

            return compare_fwd_bwd(fast, ref, dict(q=q, k=k, v=v), ["q", "k", "v"], ["o"], tol, tol, 7)

        cases.append(Case("attention (SDPA)", "causal B2 T300 H4 D128" if device.type == "cuda" else "causal small", dtype, run))
    return cases


# ----------------------------------------------------------------------------------------------- fla baselines


def baseline_cases(device: torch.device, fast_ops: dict | None = None, shapes: list | None = None) -> list[Case]:
    """fla's Triton chunk ops vs our float64 recurrences (CUDA only). ``fast_ops`` ({op name: callable}) and
    ``shapes`` replace the fla ops and the shapes; the CPU tests use them to run this machinery on references."""
    if device.type != "cuda" and fast_ops is None:
        return []
    from .kernels.baselines import reference as R

    def fla_op(path: str, name: str):
        def call(*args, **kwargs):
            import importlib

            return getattr(importlib.import_module(path), name)(*args, **kwargs)
        return call

    specs = [
        # op name, fla op, reference op, needs beta, gate kind, head dim
        ("gated_deltanet", fla_op("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"), R.chunk_gated_delta_rule, True, "scalar"),
        ("gla", fla_op("fla.ops.gla", "chunk_gla"), R.chunk_gla, False, "vector"),
        ("mamba2 (simple_gla)", fla_op("fla.ops.simple_gla", "chunk_simple_gla"), R.chunk_simple_gla, False, "scalar"),
    ]
    shapes = shapes or [("B2 T100 H2 D128", 2, 100, 2, 128, None), ("B2 T100 H2 D64", 2, 100, 2, 64, None), ("varlen 37+63+130 D128", 1, 230, 2, 128, [0, 37, 100, 230])]
    if fast_ops is not None:
        specs = [(op, fast_ops[op], *rest) for op, _, *rest in specs]
    cases = []
    for op, fast_fn, ref_fn, needs_beta, gate in specs:
        for label, B, T, H, D, cu in shapes:
            for dtype, tol_f, tol_b in ((torch.float32, 2e-3, 2e-3), (torch.bfloat16, 1e-2, 2e-2)):
                def run(fast_fn=fast_fn, ref_fn=ref_fn, needs_beta=needs_beta, gate=gate, B=B, T=T, H=H, D=D, cu=cu, dtype=dtype, tol_f=tol_f, tol_b=tol_b):
                    q, k, v, g, gen = recurrent_inputs(B, T, H, D, D, device, 11, normalize=needs_beta, scalar_gate=(gate == "scalar"))
                    inputs = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g)
                    grads = ["q", "k", "v", "g"]
                    if needs_beta:
                        inputs["beta"] = torch.rand(B, T, H, generator=gen).sigmoid().to(device)
                        grads.append("beta")
                    N = B if cu is None else len(cu) - 1
                    inputs["initial_state"] = torch.randn(N, H, D, D, generator=gen).to(device)
                    grads.append("initial_state")
                    cu_t = torch.tensor(cu, dtype=torch.int32, device=device) if cu else None

                    def wrap(fn):
                        def f(**kw):
                            kw["initial_state"] = kw["initial_state"].float() if kw["initial_state"].dtype != F64 else kw["initial_state"]
                            o, ht = fn(**kw, output_final_state=True, cu_seqlens=cu_t)
                            return o, ht
                        return f

                    return compare_fwd_bwd(wrap(fast_fn), wrap(ref_fn), inputs, grads, ["o", "final_state"], tol_f, tol_b, 11)

                cases.append(Case(op, label, dtype, run, tags=["fla"]))
    mesa_fast = fast_ops["mesanet"] if fast_ops is not None else fla_op("fla.ops.mesa_net", "chunk_mesa_net")
    cases += mesanet_cases(device, mesa_fast, R.chunk_mesa_net, shapes)
    return cases


def mesanet_cases(device, fast_fn, ref_fn, shapes) -> list[Case]:
    """MesaNet: fla's chunked CG (30 steps) vs our float64 CG recurrence with the same steps; two states.

    Tolerances: fla 0.6.0's ``chunk_mesa_net`` computes at low precision whatever the input dtype: it casts q and
    k to float16, keeps the per-chunk H_kv states in bfloat16 (``states_in_fp32=False``) and casts the CG direction
    to float16 in every product. Judged at fp32 (tf32) tolerances its fp32 output sat at 2.2e-3 on the H200
    (session 5), the size of its bf16 error (2.9e-3); rounding only the chunk-start H_kv states to bf16 moves the
    float64 reference's o by 1.5e-3 (``tests/test_check.py``). Both dtypes are therefore judged at the
    low-precision tolerances (1e-2 forward, 2e-2 gradients); a miscompile is O(1)."""
    cases = []
    for label, B, T, H, D, cu in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            def run(B=B, T=T, H=H, D=D, cu=cu, dtype=dtype, tol_f=1e-2, tol_b=2e-2):
                q, k, v, g, gen = recurrent_inputs(B, T, H, D, D, device, 13)
                N = B if cu is None else len(cu) - 1
                h_kk, h_kv = random_psd_state(N, H, D, D, device, gen)
                inputs = dict(
                    q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g,
                    beta=torch.rand(B, T, H, generator=gen).sigmoid().to(device),
                    lamb=(F.softplus(torch.rand(H, D, generator=gen)) + 0.25).to(device),
                    h_kk_init=h_kk, h_kv_init=h_kv,
                )  # fmt: skip
                cu_t = torch.tensor(cu, dtype=torch.int32, device=device) if cu else None

                def wrap(fn):
                    def f(**kw):
                        # fla 0.6.0's chunk_mesa_net (and our reference) return (o, h_kk, h_kv)
                        return fn(**kw, output_final_state=True, max_CG_iteration=30, cu_seqlens=cu_t)
                    return f

                grads = ["q", "k", "v", "g", "beta", "lamb", "h_kk_init", "h_kv_init"]
                return compare_fwd_bwd(wrap(fast_fn), wrap(ref_fn), inputs, grads, ["o", "h_kk_final", "h_kv_final"], tol_f, tol_b, 13,
                                       symmetric=("h_kk_init",))

            note = "fla computes MesaNet in fp16/bf16 internally: low-precision tolerances" if dtype == torch.float32 else ""
            cases.append(Case("mesanet", label, dtype, run, tags=["fla"], note=note))
    return cases


# ----------------------------------------------------------------------------------------------- driver


def _is_fla_guard(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "3.7.1" in str(exc)


def run_checks(
    device: torch.device, ops: list[str] | None = None, lift_guard: bool = False, progress=None, quick: bool = False,
    shapes: list[str] | None = None,
) -> list[CheckRow]:
    """Run every case for ``device``; ``ops`` filters by op-name prefix; ``shapes`` keeps the cases whose shape
    label contains one of its strings (e.g. ``["D64"]``); ``quick`` keeps the first shape of each op (fewer
    Triton compilations: fla autotunes every new shape). ``progress(case, rows)`` is called after each case with
    that case's rows. Never raises for a failing case; raises ValueError when the filters select nothing."""
    guard_lifted = False
    if lift_guard and device.type == "cuda":
        from .layers.fla_guard import lift_fla_hopper_guard

        guard_lifted = lift_fla_hopper_guard()
    cases = gka_cases(device) + attention_cases(device) + baseline_cases(device)
    if ops:
        valid = sorted({c.op.split(" ")[0] for c in cases})
        cases = [c for c in cases if any(c.op.startswith(o) for o in ops)]
        if not cases:
            raise ValueError(f"--ops {','.join(ops)} selects no check on {device.type}; valid here: {', '.join(valid)}")
    if shapes:
        picked = [c for c in cases if any(s in c.case for s in shapes)]
        if not picked:
            labels = sorted({c.case for c in cases})
            raise ValueError(f"--shapes {','.join(shapes)} matches no case; shape labels here: {'; '.join(labels)}")
        cases = picked
    if quick:
        first_shape: dict[str, str] = {}
        for c in cases:
            first_shape.setdefault(c.op, c.case.split(" r=")[0])
        cases = [c for c in cases if c.case.split(" r=")[0] == first_shape[c.op]]
    rows: list[CheckRow] = []
    for case in cases:
        start = len(rows)
        dt = _dtype_name(case.dtype)
        note = "; ".join(n for n in ("fla Hopper guard lifted" if guard_lifted and "fla" in case.tags else "", case.note) if n)
        try:
            for quantity, err, tol in case.run():
                ok = err <= tol
                rows.append(CheckRow(case.op, case.case, dt, quantity, err, tol, "pass" if ok else "FAIL", note))
        except Exception as exc:  # a refusing or crashing kernel is a result, not a crash of the checker
            if _is_fla_guard(exc):
                rows.append(CheckRow(case.op, case.case, dt, "fwd+bwd", None, None, "refused", "fla refuses gated backward here (Triton < 3.7.1 on Hopper); rerun with --lift-fla-guard to test"))
            else:
                rows.append(CheckRow(case.op, case.case, dt, "-", None, None, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if progress is not None:
            progress(case, rows[start:])
    return rows


def any_failure(rows: list[CheckRow]) -> bool:
    return any(r.status in ("FAIL", "error") for r in rows)
