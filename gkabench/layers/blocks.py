"""Building blocks shared by the mixers: causal short convolution with a decoding state, (gated) RMSNorm,
L2 normalisation, and helpers for padding masks and packed sequences. PyTorch on CPU and CUDA; the short conv
calls flash-linear-attention's Triton kernel on CUDA when fla is installed (see :data:`SHORT_CONV_BACKEND`)."""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .fused import fused_call

# Which implementation ShortConv.forward runs (read at every call, so tests may monkeypatch it):
# - "auto": fla's Triton kernel (``fla.modules.causal_conv1d.ops.causal_conv1d``) for CUDA tensors when fla
#   imports, else the PyTorch shifted sum;
# - "torch": always the PyTorch shifted sum (the reference, what CPU CI runs);
# - "fla": always fla's kernel (raises if fla is missing); on CPU tensors this only works under the Triton
#   interpreter (TRITON_INTERPRET=1 set before triton is imported), which is how the tests check it.
# Under every setting float64 inputs, empty inputs and one-token decoding steps (T == 1 with a state) take the
# PyTorch path: the kernel accumulates in float32, and a decode step is a handful of tiny ops either way.
SHORT_CONV_BACKEND = "auto"
SHORT_CONV_BACKENDS = ("auto", "torch", "fla")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in :func:`compute_dtype`: float32 for half types and float32, float64 kept (float64 tests stay tight)."""
    return x.to(compute_dtype(x))


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise the last dim to unit L2 norm (computed in float32, or float64 for float64 input)."""
    xf = upcast(x)
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


def token_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of every packed token inside its own sequence, ``[total]`` int64."""
    cu = cu_seqlens.to(torch.long)
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu.device) - starts


def mask_tokens(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded tokens of ``x [B, T, ...]`` (mask ``[B, T]``, 1 = real)."""
    if attention_mask is None:
        return x
    m = attention_mask.to(x.dtype)
    return x * m.view(*m.shape, *([1] * (x.ndim - 2)))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim, computed in float32 (float64 for float64 x), cast to out_dtype."""
    xf = upcast(x)
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps) * weight.to(xf.dtype)).to(out_dtype)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm(x) * SiLU(gate)`` in float32, one rounding to x's dtype at the end."""
    return (rms_norm(x, weight, eps, compute_dtype(x)) * F.silu(upcast(gate))).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` (SwiGLU's elementwise part)."""
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32, weight initialised to 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised, weighted x in float32 (float64 for float64 x), not yet cast back."""
        return rms_norm(x, self.weight, self.eps, compute_dtype(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., dim]`` -> same shape and dtype."""
        return fused_call(rms_norm, x, self.weight, self.eps, x.dtype)


class GatedRMSNorm(RMSNorm):
    """``RMSNorm(o) * SiLU(gate)`` per head: o, gate ``[..., head_dim]``; one rounding to x's dtype at the end."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return fused_call(gated_rms_norm, x, gate, self.weight, self.eps)


@functools.cache
def fla_causal_conv1d():
    """fla's ``causal_conv1d`` (Triton forward and backward), or None when fla or triton does not import.

    Imported on first use only: importing fla on a machine without a GPU prints a warning and costs seconds.
    """
    try:
        from fla.modules.causal_conv1d.ops import causal_conv1d
    except Exception:  # noqa: BLE001 - fla absent or broken: the PyTorch path serves
        return None
    return causal_conv1d


def conv_state_to_fla(state: torch.Tensor) -> torch.Tensor:
    """Our decoding state ``[N, C, W-1]`` (the last W-1 inputs, oldest first) -> fla's ``[N, C, W]``.

    fla's column ``w`` holds input ``t - W + w`` before the first token ``t``, so its columns 1..W-1 are ours and
    column 0 (input ``t - W``, which no tap of a width-W conv reads) is never read by fla's kernels: zero-filled.
    """
    return F.pad(state, (1, 0))


def conv_state_from_fla(state: torch.Tensor) -> torch.Tensor:
    """fla's final state ``[N, C, W]`` (the last W inputs) -> ours ``[N, C, W-1]``: column 0 dropped, contiguous."""
    return state[..., 1:].contiguous()


def short_conv_uses_fla(x: torch.Tensor, state: torch.Tensor | None) -> bool:
    """Whether :class:`ShortConv` runs fla's kernel on ``x [B, T, C]`` under :data:`SHORT_CONV_BACKEND`."""
    backend = SHORT_CONV_BACKEND
    if backend not in SHORT_CONV_BACKENDS:
        raise ValueError(f"SHORT_CONV_BACKEND={backend!r}; choose one of {', '.join(SHORT_CONV_BACKENDS)}")
    if backend == "torch":
        return False
    T = x.shape[1]
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or T == 0 or (T == 1 and state is not None):
        return False  # float64 keeps its float64 accumulation; decode steps stay on the tiny PyTorch path
    if backend == "fla":
        if fla_causal_conv1d() is None:
            raise RuntimeError("SHORT_CONV_BACKEND='fla' but fla.modules.causal_conv1d does not import")
        return True
    return x.is_cuda and fla_causal_conv1d() is not None and FLA_CONV_FAILURE is None


# Under "auto", the first exception from fla's conv is kept here (one line) and every later call runs the PyTorch
# path: a training run or sweep goes on with the reference conv instead of dying; `short_conv_impl()` says which
# one runs, and the speed sweep records it in every layer row.
FLA_CONV_FAILURE: str | None = None


def short_conv_impl() -> str:
    """Which short conv CUDA layers run now: ``"fla"``, ``"torch"``, or ``"torch (fla failed: ...)"``."""
    if SHORT_CONV_BACKEND == "torch":
        return "torch"
    if FLA_CONV_FAILURE is not None:
        return f"torch (fla failed: {FLA_CONV_FAILURE})"
    return "fla" if fla_causal_conv1d() is not None else "torch"


class ShortConv(nn.Module):
    """Depthwise causal conv1d (width ``kernel_size``) followed by SiLU, with a decoding state.

    forward(x ``[B, T, C]``, cu_seqlens=None, state=None) -> (y ``[B, T, C]``, new_state ``[B, C, W-1]``).
    ``state`` holds the last ``W-1`` inputs of earlier tokens (zeros at the start of a sequence). With
    ``cu_seqlens`` (B = 1) taps never reach across a sequence boundary; the returned state is then that of
    each packed sequence, ``[N, C, W-1]`` (a given ``state`` is then unused). y and new_state have x's dtype.

    Two implementations, picked by :func:`short_conv_uses_fla`: fla's Triton kernel (CUDA) and a PyTorch
    shifted sum (CPU, float64, decode steps, and the fallback without fla); both accumulate in float32 (float64
    for float64 inputs) and round once to x's dtype.
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: bool = True, bias: bool = False):
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        # Optional per-channel bias (Mamba2 uses one); nn.Conv1d's default init.
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-kernel_size**-0.5, kernel_size**-0.5)) if bias else None

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, state: torch.Tensor | None = None,
                reference: bool = False):  # fmt: skip
        """``reference=True`` always runs the PyTorch path (a mixer's ``backend="reference"``: the path CUDA
        results are checked against)."""
        if not reference and short_conv_uses_fla(x, state):
            try:
                return self.forward_fla(x, cu_seqlens, state)
            except Exception as exc:  # noqa: BLE001 - see FLA_CONV_FAILURE
                if SHORT_CONV_BACKEND == "fla":
                    raise
                global FLA_CONV_FAILURE
                FLA_CONV_FAILURE = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
                warnings.warn(f"fla's causal_conv1d failed ({FLA_CONV_FAILURE}); short convs run the PyTorch path from now on",
                              RuntimeWarning, stacklevel=2)  # fmt: skip
        return self.forward_torch(x, cu_seqlens, state)

    def forward_fla(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, state: torch.Tensor | None = None):
        """fla's fused Triton conv: one read of x and one write of y (the shifted sum below makes ~2W passes).

        Same contract as :meth:`forward`. fla's backward returns gradients for x, weight, bias and the state.
        """
        causal_conv1d = fla_causal_conv1d()
        # a channel slice of a wider projection (Mamba2's xBC) is a strided view; fla's kernels take strides, but
        # the interpreter tests cover contiguous inputs only, so the kernel gets those (a copy only for views)
        x = x.contiguous()
        initial_state = None
        if state is not None and cu_seqlens is None:  # with cu_seqlens the state is unused, as in forward_torch
            # rounded to x's dtype first, as forward_torch does (fla would read it at full precision)
            initial_state = conv_state_to_fla(state.to(x.dtype))
        y, final_state = causal_conv1d(
            x,
            self.weight[:, 0],  # [C, W]; tap W-1 multiplies the current token, as in forward_torch
            self.bias,
            initial_state=initial_state,
            output_final_state=True,
            activation="silu" if self.activation else None,
            backend="triton",
            cu_seqlens=cu_seqlens,
        )
        return y, conv_state_from_fla(final_state)

    def forward_torch(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, state: torch.Tensor | None = None):
        """The reference: a sum of W shifted copies in PyTorch. Same contract as :meth:`forward`."""
        # A sum of W shifted copies in the [B, T, C] layout, accumulated in float32: a few memory-bound passes.
        # Not F.conv1d: a depthwise conv1d over [B, C, T] (a transposed copy) is a slow cuDNN path in bf16, and on
        # the H200 every recurrent layer's forward ran at ~2 M tokens/s against 8 for attention, which has no conv
        # (session 3 sweep). One code path serves fixed-length and packed (cu_seqlens) inputs.
        B, T, C = x.shape
        W = self.kernel_size
        if state is None:
            state = x.new_zeros(B, C, W - 1)
        padded = torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)  # [B, W-1+T, C]
        acc = torch.promote_types(x.dtype, torch.float32)  # float32 accumulation for bf16/fp16 inputs
        w = self.weight[:, 0].to(acc)  # [C, W]; tap W-1 multiplies the current token
        keep = token_positions(cu_seqlens, T) if cu_seqlens is not None else None  # [T] position in its sequence
        y = x.to(acc) * w[:, W - 1]
        for j in range(1, W):  # tap reading the input j steps back; masked where that is the previous sequence
            shifted = padded[:, W - 1 - j : W - 1 - j + T].to(acc)
            if keep is not None:
                shifted = shifted * (keep >= j)[None, :, None].to(acc)
            y = torch.addcmul(y, shifted, w[:, W - 1 - j])
        if self.bias is not None:
            y = y + self.bias.to(acc)
        if self.activation:
            y = F.silu(y)
        if cu_seqlens is None:
            new_state = padded[:, T:].transpose(1, 2)  # the last W-1 inputs: [B, C, W-1]
        else:  # each packed sequence's last W-1 inputs, zeros where it is shorter: [N, C, W-1]
            ends = cu_seqlens[1:].to(torch.long)
            idx = ends[:, None] - (W - 1) + torch.arange(W - 1, device=x.device)[None]  # [N, W-1]
            valid = idx >= cu_seqlens[:-1].to(torch.long)[:, None]
            new_state = (x[0][idx.clamp_min(0)] * valid[..., None].to(x.dtype)).transpose(1, 2)
        return y.to(x.dtype), new_state.contiguous()


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (half-split layout) for ``[B, T, H, D]`` tensors at given positions."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, H, D]``, positions ``[B, T]`` or ``[T]`` int -> rotated x."""
        ft = torch.float64 if x.dtype == torch.float64 else torch.float32
        freqs = positions.to(ft)[..., None] * self.inv_freq.to(device=x.device, dtype=ft)  # [..., T, D/2]
        if freqs.ndim == 2:
            freqs = freqs[None]
        cos, sin = freqs.cos()[:, :, None], freqs.sin()[:, :, None]  # [B, T, 1, D/2]
        x1, x2 = upcast(x).chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def resolve_heads(
    mixer: str, total_width: int, num_heads: int | None, head_dim: int | None, default_head_dim: int
) -> tuple[int, int]:
    """Heads and head dim of a mixer whose heads span ``total_width`` channels by default.

    - both given: used as given (the width is then ``num_heads * head_dim``);
    - only ``num_heads``: ``head_dim = total_width // num_heads`` (must divide);
    - only ``head_dim``: ``num_heads = max(1, round(total_width / head_dim))``;
    - neither: ``head_dim = min(default_head_dim, total_width)`` and heads as above.
    """
    if num_heads is not None and head_dim is not None:
        return int(num_heads), int(head_dim)
    if num_heads is not None:
        if num_heads <= 0 or total_width % num_heads:
            raise ValueError(f"{mixer}: num_heads={num_heads} must divide the default width {total_width}; pass head_dim too")
        return int(num_heads), total_width // num_heads
    if head_dim is None:
        head_dim = min(default_head_dim, total_width)
    if head_dim <= 0:
        raise ValueError(f"{mixer}: head_dim must be positive, got {head_dim}")
    return max(1, round(total_width / head_dim)), int(head_dim)


def mamba_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba2-style ``dt_bias`` init: ``softplus(dt_bias)`` log-uniform in ``[dt_min, dt_max]``; ``[n]`` float32."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp_min(dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def mamba_a_log(n: int, low: float = 0.0, high: float = 16.0) -> torch.Tensor:
    """``A_log = log(A)``, ``A ~ U(low, high)``; ``[n]`` float32. The decay is ``-exp(A_log) * dt``."""
    return torch.empty(n).uniform_(low, high).clamp_min(1e-4).log()


def last_real_window(state: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last ``width`` real inputs of each sequence: the decoding state of a short conv.

    state ``[B, C, width]`` (inputs before this call, all real), x ``[B, T, C]``, attention_mask ``[B, T]``
    (1 = real). Returns ``[B, C, width]``. With trailing or interior padding the plain "last ``width``
    columns" would hold padding; this skips it, so the state equals that of the unpadded sequence.
    """
    seq = torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=-1)  # [B, C, width + T]
    if width == 0:
        return seq[..., :0]
    if attention_mask is None:
        return seq[..., -width:]
    valid = torch.cat([attention_mask.new_ones(x.shape[0], width), attention_mask], dim=1).bool()
    pos = torch.arange(seq.shape[-1], device=x.device).expand_as(valid)
    key = torch.where(valid, pos, torch.full_like(pos, -1))
    idx = key.topk(width, dim=-1).values.flip(-1)  # [B, width], ascending positions of the last real inputs
    return seq.gather(-1, idx[:, None, :].expand(-1, seq.shape[1], -1))


def conv_with_state(
    conv: ShortConv,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    state: torch.Tensor | None,
    want_state: bool,
    reference: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``conv`` on ``x [B, T, C]`` with padded tokens zeroed first (they then feed nothing forward);
    ``reference`` forces the PyTorch implementation (see :meth:`ShortConv.forward`).

    Returns ``(y [B, T, C], new_state or None)``; the new state skips padding (see :func:`last_real_window`).
    """
    x = mask_tokens(x, attention_mask)
    y, new_state = conv(x, cu_seqlens=cu_seqlens, state=state, reference=reference)
    if not want_state:
        return y, None
    if attention_mask is not None and cu_seqlens is None:
        if state is None:
            state = x.new_zeros(x.shape[0], x.shape[-1], conv.kernel_size - 1)
        new_state = last_real_window(state, x, attention_mask, conv.kernel_size - 1)
    return y, new_state


def take_options(mixer: str, options: dict, defaults: dict) -> dict:
    """``defaults`` updated by ``options``; an unknown option raises a one-line ``ValueError`` listing the valid ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"{mixer}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Gates and states: float32, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
