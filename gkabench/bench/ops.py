"""Op-level cases: the core recurrent op of each mixer alone (no projections, convs or norms).

Inputs follow /work/shared/ANCHORS.md: q, k, v standard normal (q, k L2-normalised for the delta / ridge ops),
log-decay ``logsigmoid(N(0, 1) + 4)``, beta ``sigmoid(U(0, 1))``, GKA alpha 0.5 and ridge 0.02.

On CUDA the fast ops run: GKA through :func:`gkabench.kernels.gka.gka` (Triton chunk kernels), the baselines
through flash-linear-attention's chunk ops (fused-recurrent / one-step ops for decode), attention through torch
SDPA. On CPU the pure-PyTorch references run (``gka_reference`` and
:mod:`gkabench.kernels.baselines.reference`), so CPU numbers say nothing about GPU speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OP_NAMES = {
    "gka": ("gkabench.kernels.gka.gka (Triton chunk)", "gka_reference"),
    "gated_deltanet": ("fla chunk_gated_delta_rule", "reference chunk_gated_delta_rule"),
    "gla": ("fla chunk_gla", "reference chunk_gla"),
    "mamba2": ("fla chunk_simple_gla (scalar decay, SSD)", "reference chunk_simple_gla"),
    "mesanet": ("fla chunk_mesa_net (30 CG steps)", "reference chunk_mesa_net"),
    "attention": ("torch SDPA (causal)", "torch SDPA (causal)"),
}
MESA_CG_STEPS = 30
MESA_LAMBDA = 0.25 + 0.6931  # fla MesaNet layer: lambda_lower_bound + softplus(0)
GKA_ALPHA, GKA_RIDGE = 0.5, 0.02


FORCE_FAST = False  # tests: run the CUDA-path ops on CPU tensors (under TRITON_INTERPRET=1)


def _fast(x: torch.Tensor) -> bool:
    return x.is_cuda or FORCE_FAST


class CellUnavailable(RuntimeError):
    """The op cannot run here (e.g. a kernel missing on this machine): the cell is recorded as skipped."""


@dataclass(frozen=True)
class OpDims:
    heads: int
    key_dim: int
    value_dim: int


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1).to(x.dtype)


def make_inputs(name: str, B: int, T: int, dims: OpDims, dtype, device, seed: int = 0, requires_grad: bool = False) -> dict:
    """One input set for op ``name`` (see the module docstring for the distributions)."""
    if name not in OP_NAMES:
        raise ValueError(f"no op-level case for mixer {name!r}; op level covers {', '.join(OP_NAMES)}")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: fast for 100M-element inputs
    H, K, V = dims.heads, dims.key_dim, dims.value_dim

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    if name in ("gka", "gated_deltanet", "mesanet"):
        q, k = _l2(q), _l2(k)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    inp = {"q": q, "k": k, "v": v}
    fshape = (B, T, H, K) if name == "gla" else (B, T, H)
    if name != "attention":
        inp["g"] = F.logsigmoid(torch.randn(*fshape, generator=gen, device=device) + 4)
    if name in ("gated_deltanet", "mesanet"):
        inp["beta"] = torch.sigmoid(torch.rand(B, T, H, generator=gen, device=device)).to(dtype)
    if name == "mesanet":
        inp["lamb"] = torch.full((H, K), MESA_LAMBDA, device=device, dtype=torch.float32)
    if name == "gka":
        inp["alpha"] = torch.full((B, T, H), GKA_ALPHA, device=device, dtype=torch.float32)
    return inp


def _fla(module: str, fn: str) -> Callable:
    import importlib

    try:
        return getattr(importlib.import_module(module), fn)
    except ImportError as exc:
        raise CellUnavailable(f"flash-linear-attention not importable ({exc}); install fla to time the CUDA ops") from None


def forward(name: str, inp: dict, *, final_state: bool, num_iter: int = 30, initial_state=None):
    """Run op ``name`` on one input set; returns ``(o [B, T, H, V], state)``. ``state`` is what a decode step
    continues from (None unless ``final_state``). Attention's state is its KV cache ``(k, v)``."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    cuda = _fast(q)
    if name == "attention":
        o = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return o.transpose(1, 2), ((k.detach(), v.detach()) if final_state else None)
    if name == "gka":
        from ..kernels.gka import gka, gka_reference, triton_available

        kw = {"num_iter": num_iter, "ridge": GKA_RIDGE, "initial_state": initial_state, "output_final_state": final_state}
        if cuda:
            if not triton_available():
                raise CellUnavailable("GKA Triton kernels unavailable here (gkabench.kernels.gka.chunk)")
            return gka(q, k, v, inp["g"], inp["alpha"], backend="triton", **kw)
        return gka_reference(q, k, v, inp["g"], inp["alpha"], **kw)
    if name == "mesanet":
        op = _fla("fla.ops.mesa_net", "chunk_mesa_net") if cuda else _ref("chunk_mesa_net")
        h_kk, h_kv = initial_state if initial_state is not None else (None, None)
        o, hkk, hkv = op(q, k, v, inp["g"], inp["beta"], inp["lamb"], h_kk_init=h_kk, h_kv_init=h_kv,
                         output_final_state=final_state, max_CG_iteration=MESA_CG_STEPS)  # fmt: skip
        return o, ((hkk, hkv) if final_state else None)
    fla_mod, fn = {
        "gated_deltanet": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
        "gla": ("fla.ops.gla", "chunk_gla"),
        "mamba2": ("fla.ops.simple_gla", "chunk_simple_gla"),
    }[name]
    op = _fla(fla_mod, fn) if cuda else _ref(fn)
    args = (q, k, v, inp["g"], inp["beta"]) if name == "gated_deltanet" else (q, k, v, inp["g"])
    return op(*args, initial_state=initial_state, output_final_state=final_state)


def step(name: str, inp: dict, state, *, num_iter: int = 30):
    """One decode step (inputs of length 1) from ``state``; returns ``(o, new_state)``. ``state`` is not modified
    (except attention's preallocated KV cache, whose last slot is rewritten each step)."""
    q, k, v = inp["q"], inp["k"], inp["v"]
    cuda = _fast(q)
    if name == "attention":
        kc, vc = state  # [B, H, T + 1, D], the last slot free for the new token
        kc[:, :, -1] = k[:, 0]
        vc[:, :, -1] = v[:, 0]
        o = _sdpa(q.transpose(1, 2), kc, vc, causal=False)
        return o.transpose(1, 2), state
    if name == "gka" and cuda:
        try:
            from ..kernels.gka.decode import gka_decode
        except ImportError:
            gka_decode = None
        if gka_decode is not None:
            return gka_decode(q, k, v, inp["g"], inp["alpha"], state, num_iter=num_iter, ridge=GKA_RIDGE)
    if not cuda or name == "gka":
        return forward(name, inp, final_state=True, num_iter=num_iter, initial_state=state)
    if name == "mesanet":
        op = _fla("fla.ops.mesa_net", "mesa_net_decoding_one_step")
        o, hkk, hkv = op(q[:, 0], k[:, 0], v[:, 0], inp["g"][:, 0], inp["lamb"], inp["beta"][:, 0], *state,
                         max_CG_iteration=MESA_CG_STEPS)  # fmt: skip
        return o.unsqueeze(1), (hkk, hkv)
    if name == "gated_deltanet":
        op = _fla("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule")
        return op(q, k, v, g=inp["g"], beta=inp["beta"], initial_state=state, output_final_state=True)
    if name == "gla":
        op = _fla("fla.ops.gla", "fused_recurrent_gla")
        return op(q, k, v, gk=inp["g"], initial_state=state, output_final_state=True)
    op = _fla("fla.ops.simple_gla", "fused_recurrent_simple_gla")
    return op(q, k, v, g=inp["g"], initial_state=state, output_final_state=True)


def _sdpa(q, k, v, causal: bool):
    """torch SDPA; on CPU its math backend (the fused CPU kernel is ~50x slower at the tiny CPU shapes)."""
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def state_bytes(name: str, dims: OpDims, T: int, dtype) -> int:
    """Recurrent state per sequence after T tokens: fp32 matrices per head; attention's KV cache in ``dtype``."""
    H, K, V = dims.heads, dims.key_dim, dims.value_dim
    if name == "attention":
        return T * H * (K + V) * torch.empty(0, dtype=dtype).element_size()
    if name in ("gka", "mesanet"):
        return H * (K * K + K * V) * 4
    return H * K * V * 4


def _ref(fn: str) -> Callable:
    from ..kernels.baselines import reference

    if not hasattr(reference, fn):
        raise CellUnavailable(f"gkabench.kernels.baselines.reference has no {fn} yet")
    return getattr(reference, fn)


def tile_state(name: str, state, batch: int, T: int):
    """Repeat a state prefilled on fewer sequences to ``batch`` sequences (decode timing does not depend on the
    values). Attention's KV cache becomes ``[B, H, T + 1, D]`` with a free slot for the step's token."""

    def rep(t):
        if t is None:
            return None
        idx = torch.arange(batch, device=t.device) % t.shape[0]
        return t.index_select(0, idx).contiguous()

    if name == "attention":
        k, v = state

        def kv(t):  # sequence by sequence: no transient copy of a cache that may take half the GPU
            n, L, H, D = t.shape
            out = t.new_empty(batch, H, L + 1, D)
            for i in range(batch):
                out[i, :, :L] = t[i % n].transpose(0, 1)
            out[:, :, L] = 0
            return out

        return kv(k), kv(v)
    if isinstance(state, tuple):
        return tuple(rep(t) for t in state)
    return rep(state)


def op_dims_from_layer(mixer) -> OpDims:
    """Heads / key / value dims of a built layer's core op (for ``--preset paper`` at op level)."""
    H = mixer.num_heads
    K = getattr(mixer, "head_k_dim", None) or getattr(mixer, "state_size", None) or getattr(mixer, "d_state", None)
    K = K if K and mixer.name == "mamba2" else (getattr(mixer, "head_k_dim", None) or mixer.head_dim)
    V = getattr(mixer, "head_v_dim", None) or getattr(mixer, "value_head_dim", None) or mixer.head_dim
    return OpDims(H, int(K), int(V))
