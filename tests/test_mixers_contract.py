"""The contract every registered mixer keeps (gkabench/layers/base.py), checked on CPU for all of them:
shapes, gradients to every parameter, cached decoding equal to the full forward (float64), padding and
packing, one-line errors."""

from __future__ import annotations

import pytest
import torch

from gkabench.layers import UnknownMixerError, build_mixer, get_mixer_spec, mixer_names, parse_mixer_list

ALL = ["gka", "gated_deltanet", "gla", "mamba2", "mesanet", "attention"]
HIDDEN, HEADS, HEAD_DIM = 32, 2, 8


def make(name: str, dtype=torch.float64, **opts):
    torch.manual_seed(0)
    return build_mixer(name, HIDDEN, HEADS, HEAD_DIM, **opts).to(dtype)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_registry_has_all_six():
    assert set(ALL) <= set(mixer_names())
    assert parse_mixer_list("gka,gla") == ["gka", "gla"]
    assert parse_mixer_list("all") == mixer_names()


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(UnknownMixerError, match="valid names: .*gka.*attention"):
        build_mixer("transformerxl", 32)
    with pytest.raises(ValueError, match="valid names"):
        parse_mixer_list("gka,nope")


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_gradients(name):
    mixer = make(name, torch.float32)
    x = torch.randn(2, 11, HIDDEN, requires_grad=True)
    y, cache = mixer(x)
    assert y.shape == x.shape and y.dtype == x.dtype and cache is None
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"{name}: no gradient for {missing}"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_cached_decoding_equals_full_forward(name):
    mixer = make(name)
    x = torch.randn(2, 9, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        y_full, _ = mixer(x)
        cache, steps = None, []
        for t in range(x.shape[1]):
            y_t, new_cache = mixer(x[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(y_t)
            cache = new_cache
        assert rel(torch.cat(steps, 1), y_full) <= 1e-9
        # prefill then a multi-token continuation
        y1, c1 = mixer(x[:, :5], use_cache=True)
        y2, _ = mixer(x[:, 5:], cache=c1, use_cache=True)
        assert rel(torch.cat([y1, y2], 1), y_full) <= 1e-9
        # the input cache is left unchanged: re-running a step from it gives the same output
        y2b, _ = mixer(x[:, 5:], cache=c1, use_cache=True)
        assert torch.equal(y2, y2b)
        assert c1.seen_tokens == 5


@pytest.mark.parametrize("name", ALL)
def test_left_padding_matches_unpadded(name):
    mixer = make(name)
    x = torch.randn(2, 10, HIDDEN, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        y, _ = mixer(x, attention_mask=mask)
        y_short, _ = mixer(x[1:, 4:])
        y_row0, _ = mixer(x[:1])
    assert rel(y[1, 4:], y_short[0]) <= 1e-9
    assert rel(y[0], y_row0[0]) <= 1e-9


@pytest.mark.parametrize("name", ALL)
def test_packed_sequences_equal_separate_runs(name):
    mixer = make(name)
    x = torch.randn(1, 13, HIDDEN, dtype=torch.float64)
    cu = torch.tensor([0, 5, 13], dtype=torch.int32)
    with torch.no_grad():
        y, _ = mixer(x, cu_seqlens=cu)
        ya, _ = mixer(x[:, :5])
        yb, _ = mixer(x[:, 5:])
    assert rel(y, torch.cat([ya, yb], 1)) <= 1e-9


@pytest.mark.parametrize("name", ALL)
def test_user_errors_are_value_errors(name):
    mixer = make(name, torch.float32)
    with pytest.raises(ValueError, match=str(HIDDEN)):
        mixer(torch.randn(2, 4, HIDDEN + 1))
    with pytest.raises(ValueError, match="backend"):
        build_mixer(name, HIDDEN, HEADS, HEAD_DIM, backend="cuda-magic")
    if not torch.cuda.is_available():
        forced = build_mixer(name, HIDDEN, HEADS, HEAD_DIM, backend="triton")
        with pytest.raises(ValueError, match="CUDA"):
            forced(torch.randn(1, 3, HIDDEN))


@pytest.mark.parametrize("name", ALL)
def test_state_bytes_and_spec(name):
    spec = get_mixer_spec(name)
    assert spec.summary and spec.cuda_op and spec.cpu_op
    mixer = make(name, torch.float32)
    assert mixer.state_bytes(seq_len=128) > 0
    with torch.no_grad():
        _, cache = mixer(torch.randn(1, 6, HIDDEN), use_cache=True)
    if name != "attention":  # recurrent state: fixed size, fp32 recurrent part + conv states in the input dtype
        assert cache.nbytes() == mixer.state_bytes(seq_len=6, dtype=torch.float32)


def test_gka_ablation_switches():
    x = torch.randn(1, 6, HIDDEN, dtype=torch.float64)
    for opts in ({"use_beta": True}, {"use_decay": False, "use_alpha": False}):
        mixer = make("gka", **opts)
        y, _ = mixer(x)
        assert torch.isfinite(y).all()
    assert make("gka", use_beta=True).b_proj is not None
    assert make("gka").b_proj is None
