"""The Gated KalmaNet layer (gka-spec.md section 5) over the GKA op.

    q, k, v = SiLU(ShortConv(W{q,k,v} x))            head dim D (default 128), value head dim Dv = D
    q, k    = L2-normalise per head (eps 1e-6)
    beta    = sigmoid(Wb x + bb)  (use_beta)           k <- beta k, v <- beta v
    g       = -exp(A_log) * softplus(Wa x + dt_bias)  Mamba2-style init: A ~ U(0, 16), dt log-uniform [1e-3, 0.1]
    alpha   = sigmoid(Walpha x + balpha)
    o       = gka(q, k, v, g, alpha)                   ridge 0.02, 30 Chebyshev steps
    y       = Wo (RMSNorm(o) * SiLU(Wgate x))          per head, eps 1e-6

Defaults: ``head_dim=128``, ``num_heads = hidden_size // head_dim``, ``use_beta=False`` (the paper's tables ran
with beta = 1; the authors' later public code turns it on), ``num_iter=30``, ``ridge=0.02``, ``conv_size=4``.
Ablation switches: ``use_decay=False`` fixes g = 0 (no forgetting), ``use_alpha=False`` fixes alpha = 1 (pure
ridge readout) - the paper's MQAR figure used GKA without gate or alpha.

Decoding cache: ``conv_q``, ``conv_k``, ``conv_v`` ``[B, channels, conv_size-1]`` and the op state ``h_kk
[B, H, D, D]``, ``h_kv [B, H, D, Dv]`` (float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.gka import DEFAULT_NUM_ITER, DEFAULT_RIDGE, gka, gka_chunked, gka_reference
from .base import Mixer, MixerCache
from .blocks import compute_dtype, l2_normalize, mask_tokens, resolve_heads, upcast
from .registry import register_mixer


def _gka_known_issues() -> list[str]:
    if not torch.cuda.is_available():
        return []
    from ..kernels.gka import triton_available

    if not triton_available():
        return ["GKA Triton kernels unavailable here: CUDA runs the pure-PyTorch chunked path (slow)"]
    return []


@register_mixer(
    "gka",
    summary="Gated KalmaNet: online ridge regression per token (Chebyshev solve)",
    cuda_op="gkabench.kernels.gka.chunk_gka (Triton)",
    cpu_op="gkabench.kernels.gka.gka_chunked (pure PyTorch)",
    defaults={"head_dim": 128, "num_heads": "hidden/128", "use_beta": False, "num_iter": 30, "ridge": 0.02, "conv_size": 4},
    known_issues=_gka_known_issues,
)
class GKAMixer(Mixer):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int | None = None,
        head_dim: int | None = None,
        *,
        backend: str = "auto",
        layer_idx: int | None = None,
        use_beta: bool = False,
        use_decay: bool = True,
        use_alpha: bool = True,
        num_iter: int = DEFAULT_NUM_ITER,
        ridge: float = DEFAULT_RIDGE,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
    ):
        num_heads, head_dim = resolve_heads("gka", hidden_size, num_heads, head_dim, 128)
        if conv_size < 1:
            raise ValueError(f"gka: conv_size must be >= 1 (the layer always has its short convs), got {conv_size}")
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        self.use_beta, self.use_decay, self.use_alpha = use_beta, use_decay, use_alpha
        self.num_iter, self.ridge, self.conv_size = num_iter, ridge, conv_size
        inner = num_heads * head_dim
        self.add_qkv(inner, inner, conv_size)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=True) if use_beta else None
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)  # decay rate input
        self.alpha_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.add_output(inner, head_dim, gated=True, eps=norm_eps)
        # Mamba2-style decay parameters: A ~ U(0, 16) (kept > 0 for the log), dt log-uniform in [1e-3, 0.1].
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1e-4, 16).log())
        dt = torch.exp(torch.empty(num_heads).uniform_(math.log(1e-3), math.log(0.1))).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        H, D = self.num_heads, self.head_dim
        conv = 3 * H * D * (self.conv_size - 1) * torch.empty(0, dtype=dtype).element_size()
        return H * (D * D + D * D) * 4 + conv

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """g (log decay), alpha and beta, each ``[B, T, H]`` float32 (float64 for float64 x)."""
        fdt = compute_dtype(x)
        shape = (*x.shape[:2], self.num_heads)
        if self.use_decay:
            g = -self.A_log.to(fdt).exp() * F.softplus(upcast(self.a_proj(x)) + self.dt_bias.to(fdt))
        else:
            g = x.new_zeros(shape, dtype=fdt)
        alpha = torch.sigmoid(upcast(self.alpha_proj(x))) if self.use_alpha else x.new_ones(shape, dtype=fdt)
        beta = torch.sigmoid(upcast(self.b_proj(x))) if self.b_proj is not None else None
        return g, alpha, beta

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache: bool = False):
        ctx = self.start(x, attention_mask, cu_seqlens, cache, use_cache)
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim

        q = ctx.conv(self.q_conv, self.q_proj(x), "conv_q")
        k = ctx.conv(self.k_conv, self.k_proj(x), "conv_k")
        v = ctx.conv(self.v_conv, self.v_proj(x), "conv_v")
        q = l2_normalize(q.view(B, T, H, D))
        k = l2_normalize(k.view(B, T, H, D))
        v = v.view(B, T, H, D)
        g, alpha, beta = self._gates(x)
        if beta is not None:
            k = k * beta.unsqueeze(-1).to(k.dtype)
            v = v * beta.unsqueeze(-1).to(v.dtype)
        # Padded tokens add nothing to the state and do not decay it.
        k, v, g = mask_tokens(k, ctx.mask), mask_tokens(v, ctx.mask), mask_tokens(g, ctx.mask)

        initial_state = (ctx.cached("h_kk"), ctx.cached("h_kv")) if ctx.cached("h_kk") is not None else None
        o, final_state = self._op(ctx.backend, q, k, v, g, alpha, initial_state, use_cache, cu_seqlens)
        y = self.gated_output(o, x)
        if not use_cache:
            return y, None
        return ctx.finish(y, h_kk=final_state[0], h_kv=final_state[1])

    def _op(self, backend, q, k, v, g, alpha, initial_state, output_final_state, cu_seqlens):
        kwargs = dict(
            num_iter=self.num_iter, ridge=self.ridge, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )  # fmt: skip
        stepping = initial_state is not None and q.shape[1] <= 16 and cu_seqlens is None
        if backend == "reference":
            # pure PyTorch: a few cached tokens by the token loop, longer inputs in chunk form (~100x faster)
            return gka_reference(q, k, v, g, alpha, **kwargs) if stepping else gka_chunked(q, k, v, g, alpha, **kwargs)
        if stepping and not torch.is_grad_enabled():  # the Triton decode kernel has no backward
            try:
                from ..kernels.gka.decode import gka_decode
            except ImportError:
                gka_decode = None
            if gka_decode is not None:
                return gka_decode(q, k, v, g, alpha, initial_state, num_iter=self.num_iter, ridge=self.ridge)
        return gka(q, k, v, g, alpha, backend="auto", **kwargs)
