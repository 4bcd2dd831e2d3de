"""The GKA layer against gka-spec.md section 5, written out independently here from the layer's parameters,
and its initialisation (A ~ U(0, 16), dt log-uniform in [1e-3, 0.1])."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gkabench.kernels.gka import gka_reference
from gkabench.layers import build_mixer


def spec_forward(m, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    H, D = m.num_heads, m.head_dim

    def short_conv(conv, u):  # SiLU(causal depthwise conv1d, width 4)
        y = F.conv1d(F.pad(u.transpose(1, 2), (conv.kernel_size - 1, 0)), conv.weight, groups=u.shape[-1])
        return F.silu(y).transpose(1, 2)

    def l2(t):
        return t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6)

    q = l2(short_conv(m.q_conv, x @ m.q_proj.weight.T).view(B, T, H, D))
    k = l2(short_conv(m.k_conv, x @ m.k_proj.weight.T).view(B, T, H, D))
    v = short_conv(m.v_conv, x @ m.v_proj.weight.T).view(B, T, H, D)
    if m.use_beta:
        beta = torch.sigmoid(x @ m.b_proj.weight.T + m.b_proj.bias)[..., None]
        k, v = beta * k, beta * v
    g = -m.A_log.exp() * F.softplus(x @ m.a_proj.weight.T + m.dt_bias)
    alpha = torch.sigmoid(x @ m.alpha_proj.weight.T + m.alpha_proj.bias)
    o, _ = gka_reference(q, k, v, g, alpha, num_iter=m.num_iter, ridge=m.ridge)
    o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + 1e-6) * m.o_norm.weight
    o = o * F.silu((x @ m.g_proj.weight.T).view(B, T, H, D))
    return o.reshape(B, T, H * D) @ m.o_proj.weight.T


@pytest.mark.parametrize("use_beta", [False, True])
def test_layer_is_spec_section_5(use_beta):
    torch.manual_seed(0)
    m = build_mixer("gka", 32, 2, 8, use_beta=use_beta).double()
    with torch.no_grad():  # non-trivial norm weights and biases, so every term is exercised
        m.o_norm.weight.uniform_(0.5, 1.5)
        m.alpha_proj.bias.uniform_(-1, 1)
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(x)
        y_spec = spec_forward(m, x)
    assert ((y - y_spec).norm() / y_spec.norm()).item() <= 1e-12


def test_decay_initialisation_follows_mamba2():
    torch.manual_seed(0)
    m = build_mixer("gka", 4096, 512, 8)  # 512 heads: enough samples for the ranges
    A = m.A_log.exp()
    dt = F.softplus(m.dt_bias)
    assert 0 < A.min() and A.max() <= 16 and A.mean().item() == pytest.approx(8, abs=1.0)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: log dt is uniform on [log 1e-3, log 0.1], mean at the middle
    assert dt.log().mean().item() == pytest.approx((math.log(1e-3) + math.log(0.1)) / 2, abs=0.3)


def test_default_sizes():
    m = build_mixer("gka", 2048)
    assert (m.num_heads, m.head_dim) == (16, 128)
    assert m.use_beta is False and m.num_iter == 30 and m.ridge == 0.02
    m = build_mixer("gka", 2048, num_heads=4)  # heads given: they split the hidden size
    assert (m.num_heads, m.head_dim) == (4, 512)
    with pytest.raises(ValueError, match="unknown option"):
        build_mixer("gka", 64, use_betaa=True)
    with pytest.raises(ValueError, match="conv_size"):
        build_mixer("gka", 64, conv_size=0)
