"""Gated DeltaNet (Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv 2412.06464), written on our blocks; the op is fla's ``chunk_gated_delta_rule`` on CUDA and
:func:`gkabench.kernels.baselines.reference.chunk_gated_delta_rule` on CPU.

Layer (defaults from fla 0.6.0 ``fla/layers/gated_deltanet.py``)::

    q, k, v = SiLU(conv4(Wq x)), SiLU(conv4(Wk x)), SiLU(conv4(Wv x))      short convs, no bias
    q, k    = L2-normalise per head
    beta    = sigmoid(Wb x)                    (x2 with allow_neg_eigval)
    g       = -exp(A_log) * softplus(Wa x + dt_bias)     A ~ U(0, 16), dt log-uniform in [1e-3, 0.1]
    S_t     = exp(g_t) S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t exp(g_t))^T ;  o_t = S_t^T q_t / sqrt(K)
    y       = Wo [RMSNorm(o) * SiLU(Wgate x)]  per head, eps 1e-5

Defaults: fla keeps ``num_heads * head_dim = 0.75 * hidden_size`` (6 heads of 256 at hidden 2048) and
``head_v_dim = expand_v * head_dim`` with ``expand_v = 2``. Scaled to any hidden size we keep head_dim = 256
(fewer when the width is smaller) and ``num_heads = round(0.75 * hidden / head_dim)``: hidden 1024 -> 3 x 256,
hidden 2048 -> 6 x 256. State per sequence: ``H * K * V`` fp32 + three conv states ``(2 H K + H V) * 3``.

Decoding on CUDA (one token, cache given, no autograd) uses fla's ``fused_recurrent_gated_delta_rule``,
the exact same recurrence; everything else uses the chunk op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerCache
from .blocks import (
    compute_dtype,
    l2_normalize,
    mamba_a_log,
    mamba_dt_bias,
    mask_tokens,
    resolve_heads,
    take_options,
)
from .fla_guard import hopper_guard_issues
from .registry import register_mixer

DEFAULTS = {
    "head_dim": 256,
    "num_heads": "round(0.75 * hidden_size / head_dim)",
    "expand_v": 2.0,
    "use_gate": True,
    "use_short_conv": True,
    "conv_size": 4,
    "allow_neg_eigval": False,
    "norm_eps": 1e-5,
}
_OPTIONS = {k: v for k, v in DEFAULTS.items() if k not in ("head_dim", "num_heads")}


def _known_issues() -> list[str]:
    return hopper_guard_issues("gated_deltanet (fla chunk_gated_delta_rule backward)", tilelang_bypasses=True)


@register_mixer(
    "gated_deltanet",
    summary="Gated DeltaNet: gated delta-rule state update (Mamba2-style decay, L2-normed q/k, output gate)",
    cuda_op="fla.ops.gated_delta_rule.chunk_gated_delta_rule (decode: fused_recurrent_gated_delta_rule)",
    cpu_op="gkabench.kernels.baselines.reference.chunk_gated_delta_rule",
    defaults=DEFAULTS,
    known_issues=_known_issues,
)
class GatedDeltaNetMixer(Mixer):
    """Gated DeltaNet token mixer. ``x [B, T, hidden]`` -> ``y [B, T, hidden]``; see the module docstring.

    Options: ``expand_v`` (value head dim = expand_v * head_dim), ``use_gate``, ``use_short_conv``,
    ``conv_size``, ``allow_neg_eigval``, ``norm_eps``. Cache tensors: ``conv_q``, ``conv_k``, ``conv_v``
    ``[B, C, conv_size - 1]`` and ``state [B, H, K, V]`` (fp32; fp64 for fp64 inputs).
    """

    def __init__(self, hidden_size, num_heads=None, head_dim=None, *, backend="auto", layer_idx=None, **layer_options):
        opts = take_options("gated_deltanet", layer_options, _OPTIONS)
        num_heads, head_dim = resolve_heads("gated_deltanet", int(0.75 * hidden_size), num_heads, head_dim, 256)
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        self.options = opts
        head_v_dim = head_dim * float(opts["expand_v"])
        if head_v_dim != int(head_v_dim) or head_v_dim <= 0:
            raise ValueError(f"gated_deltanet: expand_v * head_dim must be a positive integer, got {head_v_dim}")
        self.head_v_dim = int(head_v_dim)
        self.key_dim, self.value_dim = num_heads * head_dim, num_heads * self.head_v_dim
        self.use_gate, self.use_short_conv = bool(opts["use_gate"]), bool(opts["use_short_conv"])
        self.allow_neg_eigval = bool(opts["allow_neg_eigval"])
        self.conv_size = int(opts["conv_size"])

        self.add_qkv(self.key_dim, self.value_dim, self.conv_size if self.use_short_conv else None)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.A_log = nn.Parameter(mamba_a_log(num_heads, 0.0, 16.0))
        self.dt_bias = nn.Parameter(mamba_dt_bias(num_heads))
        self.add_output(self.value_dim, self.head_v_dim, self.use_gate, float(opts["norm_eps"]))

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """fp32 recurrent state ``H K V`` plus the conv states (``conv_size - 1`` inputs each) in ``dtype``."""
        conv = (2 * self.key_dim + self.value_dim) * (self.conv_size - 1) if self.use_short_conv else 0
        return self.num_heads * self.head_dim * self.head_v_dim * 4 + conv * torch.finfo(dtype).bits // 8

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache=False):
        ctx = self.start(x, attention_mask, cu_seqlens, cache, use_cache)
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_dim, self.head_v_dim
        cdt = compute_dtype(x)

        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            q, k, v = ctx.conv(self.q_conv, q, "conv_q"), ctx.conv(self.k_conv, k, "conv_k"), ctx.conv(self.v_conv, v, "conv_v")
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = l2_normalize(q.view(B, T, H, K))
        # Padded tokens: k = v = 0, beta = 0 and g = 0 leave the state exactly as it was.
        k = mask_tokens(l2_normalize(k.view(B, T, H, K)), ctx.mask)
        v = mask_tokens(v.view(B, T, H, V), ctx.mask)
        beta = torch.sigmoid(self.b_proj(x).to(cdt)) * (2.0 if self.allow_neg_eigval else 1.0)
        g = -self.A_log.to(cdt).exp() * F.softplus(self.a_proj(x).to(cdt) + self.dt_bias.to(cdt))
        beta, g = mask_tokens(beta, ctx.mask), mask_tokens(g, ctx.mask)

        o, final = self._op(ctx.backend, q, k, v, g, beta, ctx.cached("state"), use_cache, cu_seqlens,
                            decode=ctx.decoding and T == 1)  # fmt: skip
        return ctx.finish(self.gated_output(o, x), state=final)

    def _op(self, backend, q, k, v, g, beta, state, use_cache, cu_seqlens, decode):
        scale = self.head_dim**-0.5
        if backend == "reference":
            from gkabench.kernels.baselines.reference import chunk_gated_delta_rule

            return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=state,
                                          output_final_state=use_cache, cu_seqlens=cu_seqlens)  # fmt: skip
        # fla's public ops only, natural-log g (they rescale to log2 internally); q, k already L2-normalised.
        beta = beta.to(q.dtype)
        if state is not None:
            state = state.float()
        if decode and not torch.is_grad_enabled():
            from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

            return fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, scale=scale, initial_state=state,
                                                    output_final_state=use_cache, use_qk_l2norm_in_kernel=False)  # fmt: skip
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=state, output_final_state=use_cache,
                                      use_qk_l2norm_in_kernel=False, cu_seqlens=cu_seqlens)  # fmt: skip
