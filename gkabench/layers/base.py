"""What every token mixer shares: the forward signature, the decoding cache, backend selection.

Forward contract (all mixers)::

    y, cache = mixer(x, attention_mask=None, cu_seqlens=None, cache=None, use_cache=False)

- ``x [B, T, hidden]``; ``y`` has x's shape and dtype.
- ``attention_mask [B, T']``: 1 for real tokens, 0 for padding (any position; generation uses left padding).
  ``T' >= T``: during cached decoding it may cover earlier tokens too; its last T columns belong to x.
  Recurrent mixers neutralise padded tokens (their keys, values and decays contribute nothing), so outputs at
  real tokens and the final state equal those of the unpadded sequence.
- ``cu_seqlens [N + 1]`` int: packed variable-length sequences in a batch of 1; no state crosses a boundary.
- ``cache``: a :class:`MixerCache` from an earlier call on the same sequences; the call continues them.
  ``use_cache=True`` returns the updated cache as a new object; the input cache is left unchanged (so a
  step can be re-run from the same cache, as beam search and the decode benchmark do).
  One token or many per call; a prefill followed by steps equals one full forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

BACKENDS = ("auto", "reference", "triton")


@dataclass
class MixerCache:
    """Per-layer decoding cache. ``tensors`` are batch-first (dim 0 = sequence); ``seen_tokens`` counts the
    tokens consumed so far (attention uses it for RoPE positions)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    seen_tokens: int = 0

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def get(self, key: str, default=None):
        return self.tensors.get(key, default)

    def reorder(self, index: torch.Tensor) -> None:
        """Select / permute sequences along the batch (beam search)."""
        self.tensors = {k: t.index_select(0, index.to(t.device)) for k, t in self.tensors.items()}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0


def resolve_backend(backend: str, x: torch.Tensor, mixer: str, triton_ok: bool = True) -> str:
    """``auto`` -> ``triton`` for CUDA tensors (when ``triton_ok``), else ``reference``. Forcing ``triton`` on
    CPU tensors raises a one-line ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"{mixer}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if (x.is_cuda and triton_ok) else "reference"
    if backend == "triton" and not x.is_cuda:
        raise ValueError(f"{mixer}: backend='triton' needs a CUDA device; use backend='reference' on CPU")
    return backend


@dataclass
class ForwardContext:
    """Per-call bookkeeping of a mixer forward: the mask of this call's tokens, packing, the incoming cache and
    the tensors of the outgoing one. Built by :meth:`Mixer.start`; closed by :meth:`finish`."""

    mask: torch.Tensor | None  # [B, T] of this call's tokens (1 = real), None when all real
    cu_seqlens: torch.Tensor | None
    cache: MixerCache | None
    use_cache: bool
    backend: str
    new: dict[str, torch.Tensor] = field(default_factory=dict)

    def cached(self, name: str) -> torch.Tensor | None:
        return self.cache.get(name) if self.cache is not None else None

    @property
    def decoding(self) -> bool:
        """A continuation of cached sequences (the mixers may take a recurrent decode kernel)."""
        return self.cache is not None

    def conv(self, module, x: torch.Tensor, name: str) -> torch.Tensor:
        """Short conv of ``x [B, T, C]`` continuing from the cached state ``name``; the new state is kept."""
        from .blocks import conv_with_state

        y, state = conv_with_state(module, x, self.mask, self.cu_seqlens, self.cached(name), self.use_cache,
                                   reference=self.backend == "reference")  # fmt: skip
        if state is not None:
            self.new[name] = state
        return y

    def finish(self, y: torch.Tensor, **states: torch.Tensor) -> tuple[torch.Tensor, MixerCache | None]:
        """``(y, cache)`` with the conv states gathered so far and ``states``; ``(y, None)`` without use_cache."""
        if not self.use_cache:
            return y, None
        seen = self.cache.seen_tokens if self.cache is not None else 0
        return y, MixerCache({**self.new, **states}, seen_tokens=seen + y.shape[1])


class Mixer(nn.Module):
    """Base class of the registered token mixers. Subclasses set ``name`` and implement ``forward``,
    ``state_bytes`` and (optionally) ``describe``."""

    name: str = "mixer"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, backend: str = "auto", layer_idx=None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"{self.name}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if hidden_size <= 0 or num_heads <= 0 or head_dim <= 0:
            raise ValueError(
                f"{self.name}: hidden_size, num_heads and head_dim must be positive, got {hidden_size}, {num_heads}, {head_dim}"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.backend = backend
        self.layer_idx = layer_idx

    def backend_for(self, x: torch.Tensor) -> str:
        if self.backend == "auto" and x.is_cuda:
            from .inventory import triton_backend_available

            return "triton" if triton_backend_available(self.name)[0] else "reference"
        return resolve_backend(self.backend, x, self.name)

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of recurrent state per sequence after ``seq_len`` tokens (conv states included)."""
        raise NotImplementedError

    def start(self, x, attention_mask, cu_seqlens, cache, use_cache) -> ForwardContext:
        """Validate the call and open its :class:`ForwardContext` (mask cut to this call's tokens, backend)."""
        self.check_input(x, attention_mask, cu_seqlens, cache)
        mask = attention_mask[:, -x.shape[1]:] if attention_mask is not None else None
        return ForwardContext(mask, cu_seqlens, cache, use_cache, self.backend_for(x))

    def add_qkv(self, key_dim: int, value_dim: int, conv_size: int | None, conv_v: bool = True) -> None:
        """``q_proj``, ``k_proj`` (hidden -> key_dim), ``v_proj`` (hidden -> value_dim), bias-free, and when
        ``conv_size`` is given the short convs ``q_conv``, ``k_conv`` (and ``v_conv`` unless ``conv_v=False``)."""
        from .blocks import ShortConv

        if conv_size is not None and conv_size < 1:
            raise ValueError(f"{self.name}: conv_size must be >= 1, got {conv_size}; turn the convs off with the layer's use_short_conv=False where it has one")
        self.q_proj = nn.Linear(self.hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(self.hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(self.hidden_size, value_dim, bias=False)
        if conv_size:
            self.q_conv = ShortConv(key_dim, conv_size)
            self.k_conv = ShortConv(key_dim, conv_size)
            if conv_v:
                self.v_conv = ShortConv(value_dim, conv_size)

    def add_output(self, value_dim: int, head_v_dim: int, gated: bool, eps: float) -> None:
        """``o_norm`` (per-head RMSNorm, gated by ``SiLU(g_proj x)`` when ``gated``) and ``o_proj`` back to hidden."""
        from .blocks import GatedRMSNorm, RMSNorm

        if gated:
            self.g_proj = nn.Linear(self.hidden_size, value_dim, bias=False)
        self.o_norm = (GatedRMSNorm if gated else RMSNorm)(head_v_dim, eps=eps)
        self.o_proj = nn.Linear(value_dim, self.hidden_size, bias=False)

    def gated_output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``o_proj(o_norm(o) [* SiLU(g_proj x)])``: per-head (gated) RMSNorm then the output projection.
        o ``[B, T, H, Dv]``, x ``[B, T, hidden]`` -> ``[B, T, hidden]``. Mixers without ``g_proj`` skip the gate."""
        g_proj = getattr(self, "g_proj", None)
        o = self.o_norm(o, g_proj(x).view_as(o)) if g_proj is not None else self.o_norm(o)
        return self.o_proj(o.reshape(*x.shape[:2], -1))

    def check_input(self, x: torch.Tensor, attention_mask, cu_seqlens, cache) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"{self.name}: x must be [B, T, {self.hidden_size}], got {tuple(getattr(x, 'shape', ()))}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a floating-point tensor, got {x.dtype}; embed token ids first")
        if x.shape[1] < 1:
            raise ValueError(f"{self.name}: x holds no tokens (T = 0)")
        if cache is not None and cache.batch_size not in (0, x.shape[0]):
            raise ValueError(f"{self.name}: the cache holds {cache.batch_size} sequences but x has {x.shape[0]}; reorder or rebuild the cache")
        if attention_mask is not None and (
            attention_mask.ndim != 2 or attention_mask.shape[0] != x.shape[0] or attention_mask.shape[1] < x.shape[1]
        ):
            raise ValueError(
                f"{self.name}: attention_mask must be [B, T'] with T' >= T for x {tuple(x.shape[:2])}, got {tuple(attention_mask.shape)}"
            )
        if cu_seqlens is not None:
            if x.shape[0] != 1:
                raise ValueError(f"{self.name}: cu_seqlens needs a packed batch of 1, got B={x.shape[0]}")
            if cache is not None:
                raise ValueError(f"{self.name}: cu_seqlens cannot be combined with a decoding cache; decode unpacked sequences")
            if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{self.name}: cu_seqlens must be a 1-D int32/int64 tensor [0, t1, ..., T]")
            b = cu_seqlens.tolist()
            if len(b) < 2 or b[0] != 0 or b[-1] != x.shape[1] or any(y < a for a, y in zip(b, b[1:])):
                raise ValueError(f"{self.name}: cu_seqlens must start at 0, end at T={x.shape[1]} and never decrease, got {b}")
