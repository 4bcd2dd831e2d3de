"""Softmax attention with RoPE, the quadratic baseline: torch's ``scaled_dot_product_attention`` on every
device (no fla), causal, with a growing KV cache.

Layer (defaults from fla 0.6.0 ``fla/layers/attn.py``)::

    q, k, v = Wq x, Wk x, Wv x                 (num_kv_heads < num_heads: grouped-query attention)
    q, k    = RoPE(q, k) at each token's position in its own sequence (theta 10000; use_rope=False: none)
    o       = softmax(q k^T / sqrt(D) + causal mask) v
    y       = Wo o

Defaults: fla uses 32 heads of 64 at hidden 2048 (``head_dim = hidden / num_heads``). Scaled to any hidden
size we keep head_dim = 64 (fewer when the width is smaller) and ``num_heads = round(hidden / head_dim)``.
``state_bytes(seq_len)`` is the KV cache: ``2 * seq_len * num_kv_heads * head_dim`` elements.

Padding: a key-padding mask is combined with the causal mask; positions count real tokens only, so a
left-padded batch equals unpadded runs at real tokens. Query rows with no visible key (padded tokens before
the first real one) attend uniformly instead of producing NaN, and their outputs are zeroed. Packed
sequences (``cu_seqlens``) run one causal SDPA call per sequence (no [T, T] mask is materialised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerCache
from .blocks import RMSNorm, RotaryEmbedding, mask_tokens, resolve_heads, take_options, token_positions
from .registry import register_mixer

DEFAULTS = {
    "head_dim": 64,
    "num_heads": "round(hidden_size / head_dim)",
    "num_kv_heads": None,
    "rope_theta": 10000.0,
    # False: no position encoding in the layer (order then comes from the model's learned absolute positions,
    # ``GKABenchConfig.learned_positions``, as in Zoology's MQAR attention baseline)
    "use_rope": True,
    "qkv_bias": False,
    "qk_norm": False,
    # dropout on the attention probabilities while training (Zoology's MQAR attention: 0.1)
    "dropout": 0.0,
}
_OPTIONS = {k: v for k, v in DEFAULTS.items() if k not in ("head_dim", "num_heads")}


def _known_issues() -> list[str]:
    return []


@register_mixer(
    "attention",
    summary="Softmax attention with RoPE (causal, optional GQA), the quadratic-cost baseline",
    cuda_op="torch.nn.functional.scaled_dot_product_attention",
    cpu_op="torch.nn.functional.scaled_dot_product_attention",
    defaults=DEFAULTS,
    known_issues=_known_issues,
)
class AttentionMixer(Mixer):
    """Causal softmax attention. ``x [B, T, hidden]`` -> ``y [B, T, hidden]``; see the module docstring.

    Options: ``num_kv_heads`` (must divide num_heads), ``rope_theta``, ``use_rope``, ``qkv_bias``, ``qk_norm``,
    ``dropout`` (on the attention probabilities, training only).
    Cache tensors: ``k``, ``v [B, S, num_kv_heads, head_dim]`` (after RoPE) and ``mask [B, S]`` (bool, real keys).
    Both backends are the same code (SDPA); ``backend`` only checks the device.
    """

    def __init__(self, hidden_size, num_heads=None, head_dim=None, *, backend="auto", layer_idx=None, **layer_options):
        opts = take_options("attention", layer_options, _OPTIONS)
        num_heads, head_dim = resolve_heads("attention", hidden_size, num_heads, head_dim, 64)
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        if head_dim % 2:
            raise ValueError(f"attention: head_dim must be even for RoPE, got {head_dim}")
        self.options = opts
        self.num_kv_heads = int(opts["num_kv_heads"] or num_heads)
        if self.num_kv_heads <= 0 or num_heads % self.num_kv_heads:
            raise ValueError(f"attention: num_kv_heads={self.num_kv_heads} must divide num_heads={num_heads}")
        bias = bool(opts["qkv_bias"])
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.qk_norm = bool(opts["qk_norm"])
        if self.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(head_dim), RMSNorm(head_dim)
        self.rotary = RotaryEmbedding(head_dim, base=float(opts["rope_theta"])) if opts["use_rope"] else None
        self.dropout = float(opts["dropout"])
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"attention: dropout must be in [0, 1), got {self.dropout}")

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """KV cache bytes after ``seq_len`` tokens: ``2 * seq_len * num_kv_heads * head_dim`` elements of ``dtype``."""
        return 2 * seq_len * self.num_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8

    def _rotate(self, q, k, positions):
        """RoPE on q, k ``[B, T, H, D]`` at ``positions()`` (a callable: no work without RoPE); as given without it."""
        if self.rotary is None:
            return q, k
        p = positions()
        return self.rotary(q, p), self.rotary(k, p)

    def _sdpa(self, q, k, v, mask=None, is_causal=False):
        """q ``[B, T, H, D]``, k, v ``[B, S, Hkv, D]`` -> ``[B, T, H, D]``."""
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.num_kv_heads != self.num_heads,
        )  # fmt: skip
        return o.transpose(1, 2)

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache=False):
        self.check_input(x, attention_mask, cu_seqlens, cache)
        if attention_mask is not None:  # [B, T'] with T' >= T: its last T columns belong to x
            attention_mask = attention_mask[:, -x.shape[1]:]
        self.backend_for(x)  # validates the backend / device pair; SDPA serves both
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, Hkv, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)

        if cu_seqlens is not None:
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("attention: packed sequences (cu_seqlens) carry no padding; drop the padded tokens or the mask")
            q, k = self._rotate(q, k, lambda: token_positions(cu_seqlens, T))
            bounds = cu_seqlens.tolist()
            outs = [
                self._sdpa(q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True)
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
            o = torch.cat(outs, dim=1) if outs else q.new_zeros(1, 0, H, D)
            y = self.o_proj(o.reshape(B, T, H * D))
            if not use_cache:
                return y, None
            return y, self._packed_cache(k, v, bounds)

        if attention_mask is None and (cache is None or cache.get("mask") is None):
            # No padding anywhere (no mask now, none kept in the cache): positions follow from the cache length, no
            # mask is carried and no host synchronisation is needed, so a decode step can be captured as a CUDA graph.
            P = cache["k"].shape[1] if cache is not None else 0
            positions = torch.arange(P, P + T, device=x.device).expand(B, T)
            keys = None
        else:
            cur = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
            if cache is None:
                past = cur.new_zeros(B, 0)
            else:  # a cache without a mask holds only real tokens
                past = cache["mask"].bool() if cache.get("mask") is not None else cur.new_ones(B, cache["k"].shape[1])
            if cache is not None and past.shape[0] != B:
                raise ValueError(f"attention: cache holds {past.shape[0]} sequences but x has B={B}")
            # Positions count real tokens only, so left padding does not shift RoPE.
            positions = (past.sum(1, keepdim=True) + cur.long().cumsum(1) - 1).clamp_min(0)
            keys = torch.cat([past, cur], dim=1)  # [B, S]
        q, k = self._rotate(q, k, lambda: positions)
        if cache is not None:
            k = torch.cat([cache["k"].to(k.dtype), k], dim=1)
            v = torch.cat([cache["v"].to(v.dtype), v], dim=1)
        S = k.shape[1]

        if (keys is None or bool(keys.all())) and (cache is None or T == 1):
            # No padding: the fast paths (flash attention on CUDA) need no explicit mask.
            o = self._sdpa(q, k, v, is_causal=cache is None and T > 1)
        else:
            allowed = self._causal_offset_mask(T, S, x.device)[None]  # [1, T, S]: a chunk after cached keys
            if keys is not None:
                allowed = allowed & keys[:, None, :]  # [B, T, S]
                # A padded query before the first real token sees no key: let it attend to all (finite), zero it below.
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            o = self._sdpa(q, k, v, mask=allowed[:, None])
        o = mask_tokens(o, attention_mask)
        y = self.o_proj(o.reshape(B, T, H * D))
        if not use_cache:
            return y, None
        seen = (cache.seen_tokens if cache is not None else 0) + T
        kept = {"k": k, "v": v} if keys is None else {"k": k, "v": v, "mask": keys}
        return y, MixerCache(kept, seen)

    @staticmethod
    def _causal_offset_mask(T: int, S: int, device) -> torch.Tensor:
        """``[T, S]`` bool: query i (the last T of S positions) may see keys 0 .. S - T + i."""
        i = torch.arange(T, device=device)[:, None] + (S - T)
        return torch.arange(S, device=device)[None, :] <= i

    def _packed_cache(self, k, v, bounds) -> MixerCache:
        """Per-sequence KV caches of a packed batch, left-padded to the longest sequence (mask marks real keys)."""
        lens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        S, N = max(lens), len(lens)
        kc = k.new_zeros(N, S, *k.shape[2:])
        vc = v.new_zeros(N, S, *v.shape[2:])
        mask = torch.zeros(N, S, dtype=torch.bool, device=k.device)
        for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            kc[n, S - (b - a) :] = k[0, a:b]
            vc[n, S - (b - a) :] = v[0, a:b]
            mask[n, S - (b - a) :] = True
        return MixerCache({"k": kc, "v": vc, "mask": mask}, S)
