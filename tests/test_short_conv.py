"""ShortConv (shifted-sum causal depthwise conv) against F.conv1d in float64: fixed length, carried state,
packed sequences (no tap crosses a boundary), and the returned decoding states."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gkabench.layers.blocks import ShortConv


def conv1d_reference(conv: ShortConv, x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
    """F.conv1d on [B, C, T] with the state prepended, float64."""
    B, T, C = x.shape
    W = conv.kernel_size
    st = state if state is not None else x.new_zeros(B, C, W - 1)
    padded = torch.cat([st, x.transpose(1, 2)], dim=-1).double()
    b = conv.bias.double() if conv.bias is not None else None
    y = F.conv1d(padded, conv.weight.double(), b, groups=C)
    return (F.silu(y) if conv.activation else y).transpose(1, 2)


def test_fixed_length_and_state_match_conv1d():
    torch.manual_seed(0)
    for bias in (False, True):
        conv = ShortConv(12, 4, bias=bias).double()
        x = torch.randn(3, 17, 12, dtype=torch.float64)
        st = torch.randn(3, 12, 3, dtype=torch.float64)
        for state in (None, st):
            y, new_state = conv(x, state=state)
            torch.testing.assert_close(y, conv1d_reference(conv, x, state), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(new_state, x[:, -3:].transpose(1, 2))


def test_state_carries_across_calls():
    torch.manual_seed(1)
    conv = ShortConv(8, 4).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    y_full, _ = conv(x)
    y1, s1 = conv(x[:, :6])
    y2, _ = conv(x[:, 6:], state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-12, atol=1e-12)


def test_packed_sequences_equal_separate_calls():
    torch.manual_seed(2)
    conv = ShortConv(6, 4, bias=True).double()
    lens = [2, 7, 5]
    xs = [torch.randn(1, n, 6, dtype=torch.float64) for n in lens]
    cu = torch.tensor([0, 2, 9, 14], dtype=torch.int32)
    y, states = conv(torch.cat(xs, 1), cu_seqlens=cu)
    outs = [conv(xi) for xi in xs]
    torch.testing.assert_close(y, torch.cat([o[0] for o in outs], 1), rtol=1e-12, atol=1e-12)
    # a sequence shorter than W-1 pads its state with zeros on the left
    expect = [F.pad(xi[0].T, (max(0, 3 - xi.shape[1]), 0))[:, -3:] for xi in xs]
    torch.testing.assert_close(states, torch.stack(expect), rtol=0, atol=0)


def test_bf16_accumulates_in_float32():
    torch.manual_seed(3)
    conv = ShortConv(64, 4)
    x = torch.randn(2, 33, 64)
    y = conv(x.bfloat16())[0]
    ref = conv1d_reference(conv.double(), x.bfloat16().double(), None)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).norm() / ref.norm()) < 4e-3  # one bf16 rounding of the output (2^-9 relative)
