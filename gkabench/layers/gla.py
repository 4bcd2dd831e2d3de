"""Gated Linear Attention (Yang, Wang, Shen, Panda, Kim, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv 2312.06635), written on our blocks; the op is fla's ``chunk_gla`` on
CUDA and :func:`gkabench.kernels.baselines.reference.chunk_gla` on CPU.

Layer (defaults from fla 0.6.0 ``fla/layers/gla.py``)::

    q, k, v = Wq x, Wk x, Wv x                  (optional SiLU(conv4(.)), off by default as in fla)
    g       = logsigmoid(W2 W1 x + b) / 16      per key channel, low-rank (16) gate projection
    S_t     = diag(exp(g_t)) S_{t-1} + k_t v_t^T ;  o_t = S_t^T q_t / sqrt(K)
    y       = Wo [RMSNorm(o) * SiLU(Wgate x)]   per head, eps 1e-5

Defaults: fla uses ``expand_k = 0.5``, ``expand_v = 1`` and 4 heads at hidden 1024 (head_k_dim 128,
head_v_dim 256). Scaled to any hidden size we keep head_dim (key) = 128 (fewer when the width is smaller),
``num_heads = round(0.5 * hidden / head_dim)`` and ``head_v_dim = head_dim * expand_v / expand_k`` (2 x head_dim).
State per sequence: ``H * K * V`` fp32 (+ conv states when ``use_short_conv``).

Decoding on CUDA (one token, cache given, no autograd) uses fla's ``fused_recurrent_gla``, the exact same
recurrence; everything else uses the chunk op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerCache
from .blocks import (
    compute_dtype,
    mask_tokens,
    resolve_heads,
    take_options,
)
from .registry import register_mixer

DEFAULTS = {
    "head_dim": 128,
    "num_heads": "round(expand_k * hidden_size / head_dim)",
    "expand_k": 0.5,
    "expand_v": 1.0,
    "head_v_dim": "head_dim * expand_v / expand_k",
    "use_short_conv": False,
    "conv_size": 4,
    "use_output_gate": True,
    "norm_eps": 1e-5,
    "gate_logit_normalizer": 16,
    "gate_low_rank_dim": 16,
    "clamp_min": None,
}
_OPTIONS = {k: (None if k == "head_v_dim" else v) for k, v in DEFAULTS.items() if k not in ("head_dim", "num_heads")}


def _known_issues() -> list[str]:
    # chunk_gla has its own backward kernels (no chunk_bwd_dqkwg guard); fla only prunes Hopper configs
    # for state_v_first=True, which we never use.
    return []


@register_mixer(
    "gla",
    summary="Gated Linear Attention: linear attention with a data-dependent per-channel decay and output gate",
    cuda_op="fla.ops.gla.chunk_gla (decode: fused_recurrent_gla)",
    cpu_op="gkabench.kernels.baselines.reference.chunk_gla",
    defaults=DEFAULTS,
    known_issues=_known_issues,
)
class GLAMixer(Mixer):
    """GLA token mixer. ``x [B, T, hidden]`` -> ``y [B, T, hidden]``; see the module docstring.

    Options: ``expand_k``, ``expand_v`` (set the default widths), ``head_v_dim``, ``use_short_conv``,
    ``conv_size``, ``use_output_gate``, ``norm_eps``, ``gate_logit_normalizer``, ``gate_low_rank_dim``,
    ``clamp_min``. Cache tensors: ``state [B, H, K, V]`` (+ ``conv_q``, ``conv_k``, ``conv_v`` with short conv).
    """

    def __init__(self, hidden_size, num_heads=None, head_dim=None, *, backend="auto", layer_idx=None, **layer_options):
        opts = take_options("gla", layer_options, _OPTIONS)
        expand_k, expand_v = float(opts["expand_k"]), float(opts["expand_v"])
        num_heads, head_dim = resolve_heads("gla", max(1, int(expand_k * hidden_size)), num_heads, head_dim, 128)
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        self.options = opts
        head_v_dim = opts["head_v_dim"] if opts["head_v_dim"] is not None else head_dim * expand_v / expand_k
        if head_v_dim != int(head_v_dim) or head_v_dim <= 0:
            raise ValueError(f"gla: head_v_dim must be a positive integer, got {head_v_dim}; pass head_v_dim=...")
        self.head_v_dim = int(head_v_dim)
        self.key_dim, self.value_dim = num_heads * head_dim, num_heads * self.head_v_dim
        self.use_short_conv, self.use_output_gate = bool(opts["use_short_conv"]), bool(opts["use_output_gate"])
        self.conv_size = int(opts["conv_size"])
        self.gate_logit_normalizer = float(opts["gate_logit_normalizer"])
        self.clamp_min = opts["clamp_min"]

        self.add_qkv(self.key_dim, self.value_dim, self.conv_size if self.use_short_conv else None)
        rank = int(opts["gate_low_rank_dim"])
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, rank, bias=False), nn.Linear(rank, self.key_dim, bias=True))
        self.add_output(self.value_dim, self.head_v_dim, self.use_output_gate, float(opts["norm_eps"]))

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """fp32 recurrent state ``H K V`` plus the conv states (when used) in ``dtype``."""
        conv = (2 * self.key_dim + self.value_dim) * (self.conv_size - 1) if self.use_short_conv else 0
        return self.num_heads * self.head_dim * self.head_v_dim * 4 + conv * torch.finfo(dtype).bits // 8

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache=False):
        ctx = self.start(x, attention_mask, cu_seqlens, cache, use_cache)
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_dim, self.head_v_dim

        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            q, k, v = ctx.conv(self.q_conv, q, "conv_q"), ctx.conv(self.k_conv, k, "conv_k"), ctx.conv(self.v_conv, v, "conv_v")
        q = q.view(B, T, H, K)
        # Padded tokens: k = v = 0 and g = 0 leave the state exactly as it was.
        k = mask_tokens(k.view(B, T, H, K), ctx.mask)
        v = mask_tokens(v.view(B, T, H, V), ctx.mask)
        g = F.logsigmoid(self.gk_proj(x).to(compute_dtype(x))) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            g = g.clamp_min(float(self.clamp_min))
        g = mask_tokens(g.view(B, T, H, K), ctx.mask)

        o, final = self._op(ctx.backend, q, k, v, g, ctx.cached("state"), use_cache, cu_seqlens,
                            decode=ctx.decoding and T == 1)  # fmt: skip
        return ctx.finish(self.gated_output(o, x), state=final)

    def _op(self, backend, q, k, v, g, state, use_cache, cu_seqlens, decode):
        scale = self.head_dim**-0.5
        if backend == "reference":
            from gkabench.kernels.baselines.reference import chunk_gla

            return chunk_gla(q, k, v, g, scale=scale, initial_state=state, output_final_state=use_cache, cu_seqlens=cu_seqlens)
        # fla's public ops, natural-log gates, state [N, H, K, V] (state_v_first=False); chunk_gla asserts an
        # fp32 initial state and q, k, g of one shape.
        if state is not None:
            state = state.float()
        if decode and not torch.is_grad_enabled():
            from fla.ops.gla import fused_recurrent_gla

            return fused_recurrent_gla(q, k, v, gk=g, scale=scale, initial_state=state, output_final_state=use_cache)
        from fla.ops.gla import chunk_gla

        return chunk_gla(q, k, v, g, scale=scale, initial_state=state, output_final_state=use_cache, cu_seqlens=cu_seqlens)
