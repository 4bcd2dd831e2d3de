"""Mamba2 (Dao, Gu, "Transformers are SSMs", arXiv 2405.21060), written on our blocks. Its SSD scan is
scalar-decay linear attention, so the op is fla's ``chunk_simple_gla`` on CUDA and
:func:`gkabench.kernels.baselines.reference.chunk_simple_gla` on CPU, with::

    q = C,  k = dt * B,  v = x,  g = dt * A (natural log, A = -exp(A_log)),  scale = 1;  y = o + D * x

Layer (defaults from fla 0.6.0 ``fla/layers/mamba2.py``)::

    z, xBC, dt = in_proj(u)                    widths: intermediate, intermediate + 2 G N, H
    xBC        = SiLU(conv4(xBC) + bias)       one depthwise conv over x, B and C
    x, B, C    = split(xBC)                    x [H, P] per token; B, C [G, N] shared by H / G heads
    dt         = softplus(dt + dt_bias)        dt log-uniform in [1e-3, 0.1] at init; A ~ U(1, 16)
    S_t        = exp(dt A) S_{t-1} + (dt B_t) x_t^T  (S [N, P] per head) ;  o_t = S_t^T C_t + D x_t
    y          = out_proj(RMSNorm_group(o * SiLU(z)))   norm after the gate (norm_before_gate=False), eps 1e-5

Defaults: ``expand = 2``, ``head_dim (P) = 64``, ``state_size (N) = 128``, ``n_groups = 1``; heads
``num_heads = expand * hidden / head_dim`` (fla infers it the same way). ``num_heads`` and ``head_dim`` may
both be given (the inner width is then ``num_heads * head_dim``). State per sequence: ``H * N * P`` fp32 plus
the conv state ``(intermediate + 2 G N) * 3``.

Decoding on CUDA (one token, cache given, no autograd) uses fla's ``fused_recurrent_simple_gla``, the exact
same recurrence; everything else uses the chunk op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerCache
from .blocks import (
    ShortConv,
    compute_dtype,
    conv_with_state,
    mamba_a_log,
    mamba_dt_bias,
    mask_tokens,
    resolve_heads,
    take_options,
)
from .fla_guard import hopper_guard_issues
from .registry import register_mixer

DEFAULTS = {
    "head_dim": 64,
    "num_heads": "expand * hidden_size / head_dim",
    "expand": 2,
    "state_size": 128,
    "n_groups": 1,
    "conv_size": 4,
    "conv_bias": True,
    "A_init_range": (1.0, 16.0),
    "dt_min": 1e-3,
    "dt_max": 0.1,
    "dt_limit": (0.0, float("inf")),
    "norm_eps": 1e-5,
    "rmsnorm": True,
}
_OPTIONS = {k: v for k, v in DEFAULTS.items() if k not in ("head_dim", "num_heads")}


def _known_issues() -> list[str]:
    # simple_gla's backward always reaches the guarded Triton kernel (TileLang rejects its fp32 h).
    return hopper_guard_issues("mamba2 (fla chunk_simple_gla backward)", tilelang_bypasses=False)


class _GatedGroupRMSNorm(nn.Module):
    """``RMSNorm(o * SiLU(z))`` over groups of ``group_size`` channels (Mamba2's gate-then-norm)."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cdt = compute_dtype(o)  # float32, float64 for float64 inputs
        y = o.to(cdt) * F.silu(z.to(cdt))
        yg = y.view(*y.shape[:-1], -1, self.group_size)
        yg = yg * torch.rsqrt(yg.square().mean(-1, keepdim=True) + self.eps)
        return (yg.view_as(y) * self.weight.to(cdt)).to(o.dtype)


@register_mixer(
    "mamba2",
    summary="Mamba2: selective SSM with scalar per-head decay (SSD), run as chunked simple GLA plus the D skip",
    cuda_op="fla.ops.simple_gla.chunk_simple_gla (decode: fused_recurrent_simple_gla)",
    cpu_op="gkabench.kernels.baselines.reference.chunk_simple_gla",
    defaults=DEFAULTS,
    known_issues=_known_issues,
)
class Mamba2Mixer(Mixer):
    """Mamba2 token mixer. ``x [B, T, hidden]`` -> ``y [B, T, hidden]``; see the module docstring.

    ``num_heads`` / ``head_dim`` are the SSM heads and their value width P; the key width is ``state_size``.
    Options: ``expand``, ``state_size``, ``n_groups``, ``conv_size``, ``conv_bias``, ``A_init_range``,
    ``dt_min``, ``dt_max``, ``dt_limit``, ``norm_eps``, ``rmsnorm``. Cache tensors: ``conv [B, C, conv_size - 1]``
    and ``state [B, H, N, P]`` (fp32; fp64 for fp64 inputs).
    """

    def __init__(self, hidden_size, num_heads=None, head_dim=None, *, backend="auto", layer_idx=None, **layer_options):
        opts = take_options("mamba2", layer_options, _OPTIONS)
        num_heads, head_dim = resolve_heads("mamba2", int(opts["expand"] * hidden_size), num_heads, head_dim, 64)
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        self.options = opts
        self.intermediate_size = num_heads * head_dim
        self.state_size, self.n_groups = int(opts["state_size"]), int(opts["n_groups"])
        if self.state_size <= 0 or self.n_groups <= 0 or num_heads % self.n_groups:
            raise ValueError(f"mamba2: n_groups={self.n_groups} must divide num_heads={num_heads}; state_size must be > 0")
        self.conv_size = int(opts["conv_size"])
        self.conv_dim = self.intermediate_size + 2 * self.n_groups * self.state_size
        self.dt_limit = tuple(float(t) for t in opts["dt_limit"])
        self.rmsnorm = bool(opts["rmsnorm"])

        self.in_proj = nn.Linear(hidden_size, self.intermediate_size + self.conv_dim + num_heads, bias=False)
        self.conv = ShortConv(self.conv_dim, self.conv_size, bias=bool(opts["conv_bias"]))
        self.dt_bias = nn.Parameter(mamba_dt_bias(num_heads, float(opts["dt_min"]), float(opts["dt_max"])))
        self.A_log = nn.Parameter(mamba_a_log(num_heads, *map(float, opts["A_init_range"])))
        self.D = nn.Parameter(torch.ones(num_heads))
        if self.rmsnorm:
            self.norm = _GatedGroupRMSNorm(self.intermediate_size, self.intermediate_size // self.n_groups, float(opts["norm_eps"]))
        self.out_proj = nn.Linear(self.intermediate_size, hidden_size, bias=False)

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """fp32 SSM state ``H N P`` plus the conv state (``conv_size - 1`` inputs of x, B, C) in ``dtype``."""
        ssm = self.num_heads * self.state_size * self.head_dim * 4
        return ssm + self.conv_dim * (self.conv_size - 1) * torch.finfo(dtype).bits // 8

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache=False):
        self.check_input(x, attention_mask, cu_seqlens, cache)
        if attention_mask is not None:  # [B, T'] with T' >= T: its last T columns belong to x
            attention_mask = attention_mask[:, -x.shape[1]:]
        backend = self.backend_for(x)
        B, T, _ = x.shape
        H, P, N, G = self.num_heads, self.head_dim, self.state_size, self.n_groups
        cdt = compute_dtype(x)
        new: dict[str, torch.Tensor] = {}

        z, xbc, dt = self.in_proj(x).split([self.intermediate_size, self.conv_dim, H], dim=-1)
        xbc, conv_state = conv_with_state(self.conv, xbc, attention_mask, cu_seqlens,
                                          cache.get("conv") if cache is not None else None, use_cache,
                                          reference=backend == "reference")  # fmt: skip
        if conv_state is not None:
            new["conv"] = conv_state
        # Padded tokens: x = B = C = 0 and dt = 0 (so g = 0) leave the state exactly as it was.
        xbc = mask_tokens(xbc, attention_mask)
        xs, b, c = xbc.split([self.intermediate_size, G * N, G * N], dim=-1)
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        dt = mask_tokens(dt, attention_mask)  # [B, T, H]
        g = dt * -self.A_log.to(cdt).exp()
        heads_per_group = H // G
        b = b.view(B, T, G, N).repeat_interleave(heads_per_group, dim=2)
        c = c.view(B, T, G, N).repeat_interleave(heads_per_group, dim=2)
        # q, k, v in one dtype: under autocast x is float32 while the projections (so xs, B, C) are bfloat16, and
        # fla's kernels refuse a float32 k against a bfloat16 v (session 6: a Triton CompilationError in training)
        k = (b.to(cdt) * dt.unsqueeze(-1)).to(xs.dtype)
        v = xs.view(B, T, H, P)

        state = cache.get("state") if cache is not None else None
        o, final = self._op(backend, c, k, v, g, state, use_cache, cu_seqlens, decode=cache is not None and T == 1)
        o = o + self.D.to(o.dtype)[:, None] * v
        o = o.reshape(B, T, self.intermediate_size)
        o = self.norm(o, z) if self.rmsnorm else o * F.silu(z)
        y = self.out_proj(o)
        if not use_cache:
            return y, None
        new["state"] = final
        return y, MixerCache(new, (cache.seen_tokens if cache is not None else 0) + T)

    def _op(self, backend, q, k, v, g, state, use_cache, cu_seqlens, decode):
        if backend == "reference":
            from gkabench.kernels.baselines.reference import chunk_simple_gla

            return chunk_simple_gla(q, k, v, g, scale=1.0, initial_state=state, output_final_state=use_cache, cu_seqlens=cu_seqlens)
        # fla's public ops, natural-log g [B, T, H], scale 1 (Mamba2 has none), state [N, H, K=N_ssm, V=P].
        if state is not None:
            state = state.float()
        if decode and not torch.is_grad_enabled():
            from fla.ops.simple_gla import fused_recurrent_simple_gla

            return fused_recurrent_simple_gla(q, k, v, g=g, scale=1.0, initial_state=state, output_final_state=use_cache)
        from fla.ops.simple_gla import chunk_simple_gla

        return chunk_simple_gla(q, k, v, g=g, scale=1.0, initial_state=state, output_final_state=use_cache, cu_seqlens=cu_seqlens)
