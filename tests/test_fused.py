"""Compiled (fused) norms and gates: same math as the eager ops, forward and gradients, and the switch around them."""

import copy

import pytest
import torch

from gkabench.layers import blocks, fused
from gkabench.models import GKABenchForCausalLM, preset_config


def test_compiled_ops_match_float64():
    """Inductor's CPU kernels of rms_norm, gated_rms_norm and silu_mul against float64 eager (tolerances: fused.FUSED_OP_TOL)."""
    res = fused.check_fused_ops("cpu")
    if res["impl"] != "compiled":
        pytest.skip(f"torch.compile unavailable here: {res['impl']}")
    assert res["pass"], res


@pytest.mark.parametrize("mixer", ["gka", "attention"])
def test_model_with_fused_ops_equals_eager(monkeypatch, mixer):
    """A whole model's loss and gradients with every norm and gate compiled equal the eager ones up to float32
    rounding (aot_eager compiles the same graphs without a C++ compiler). GKA's solver amplifies rounding: its
    float32 gradients sit up to ~2.5e-5 of each tensor's largest entry from float64 (measured); the gap between
    the two float32 paths was <= 4.2e-6 of it. Tolerance: 1e-4 of each tensor's largest entry."""
    torch.manual_seed(0)
    model = GKABenchForCausalLM(preset_config("tiny", mixer=mixer, vocab_size=64))
    ids = torch.randint(0, 64, (2, 32))
    monkeypatch.setattr(fused, "FUSED_BACKEND", "aot_eager")
    fused._compiled.cache_clear()
    got = {}
    for mode in ("off", "always"):
        monkeypatch.setattr(fused, "FUSED_ELEMENTWISE", mode)
        m = copy.deepcopy(model)
        out = m(ids, labels=ids, use_cache=False)
        out.loss.backward()
        got[mode] = (out.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    fused._compiled.cache_clear()
    assert fused.FUSED_FAILURE is None
    torch.testing.assert_close(got["always"][0], got["off"][0], rtol=1e-6, atol=1e-6)
    assert got["always"][1].keys() == got["off"][1].keys()
    for name, g in got["off"][1].items():
        torch.testing.assert_close(got["always"][1][name], g, rtol=0, atol=1e-4 * g.abs().max().item(), msg=name)


def test_auto_runs_eager_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "_compiled", lambda fn: calls.append(fn) or fn)
    monkeypatch.setattr(fused, "FUSED_ELEMENTWISE", "auto")
    x = torch.randn(2, 4, 8)
    fused.fused_call(blocks.silu_mul, x, x)
    assert calls == []  # CPU tensors: eager under "auto"
    monkeypatch.setattr(fused, "FUSED_ELEMENTWISE", "always")
    fused.fused_call(blocks.silu_mul, x, x)
    assert calls == [blocks.silu_mul]


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn):
        def run(*a):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(fused, "_compiled", broken)
    monkeypatch.setattr(fused, "FUSED_ELEMENTWISE", "always")
    monkeypatch.setattr(fused, "FUSED_FAILURE", None)
    x = torch.randn(3, 8)
    with pytest.warns(UserWarning, match="running eager"):
        y = fused.fused_call(blocks.silu_mul, x, x)
    torch.testing.assert_close(y, torch.nn.functional.silu(x) * x)
    assert fused.fused_impl().startswith("eager (compile failed: RuntimeError: no compiler here")
