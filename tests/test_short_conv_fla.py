"""ShortConv's fla path (``fla.modules.causal_conv1d``'s Triton kernels) against its PyTorch path.

CPU: fla's kernels run under the Triton interpreter. ``TRITON_INTERPRET=1`` must be set before triton is imported,
so one subprocess (this file run as a script) computes every relative error on tiny shapes and the tests below
assert on them; the test is skipped when fla is missing or the interpreter cannot run fla's conv at all (a probe
of fla's op alone, before any of our code runs). Three interpreter shims, all test-only:

- fla's kernels are autotuned; there is nothing to time without a GPU, so every config "times" by its index and
  the first one (BD=16, i.e. two channel tiles over C=24, the second one partial) runs;
- fla's ``compute_dh0_kernel`` builds a mask as ``(t < seq_len) & m_d``: with a Python ``t`` and a scalar
  ``seq_len`` the interpreter makes that int32 (0/1) where compiled Triton makes it i1, and its masked load
  rejects int32 masks; the shim turns 0/1 masks into booleans (and fails on any other value);
- the interpreter truncates float32 -> bfloat16 casts (triton 3.9) where the GPU rounds to nearest even;
  the shim rounds them as the GPU does, so bf16 outputs can be compared with the PyTorch path's.

In float32 both paths accumulate in float32, in different orders: ~1e-7 relative, asserted at 1e-5. In bf16 the
outputs match up to rare rounding flips and fla's gradients are no further from float64 than the PyTorch path's.
GPU: the same comparison on CUDA tensors at larger shapes, in bf16 and fp32, marked ``gpu``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from gkabench.layers import blocks
from gkabench.layers.blocks import ShortConv, conv_state_from_fla, conv_state_to_fla, short_conv_uses_fla

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
TOL = 1e-5

# name -> (W, bias, activation, B, T, with state, cu_seqlens or None); C = 24 throughout
CASES = {
    **{
        f"W4{'_bias' if bias else ''}{'_silu' if act else ''}{'_state' if st else ''}": (4, bias, act, 2, 37, st, None)
        for bias in (False, True)
        for act in (False, True)
        for st in (False, True)
    },
    "W3_bias_silu_state": (3, True, True, 2, 37, True, None),
    "W2_bias_silu_state": (2, True, True, 2, 37, True, None),
    "W2_silu": (2, False, True, 1, 9, False, None),
    # two of fla's 64-token chunks: taps from the first chunk into the second, the state only in the first
    "W4_bias_silu_state_two_chunks": (4, True, True, 1, 70, True, None),
    # shorter than W-1: the returned state is part given state, part x (fla reads both in its final-state kernel)
    "W4_short_T2_state": (4, True, True, 2, 2, True, None),
    "W4_varlen": (4, False, False, 1, 15, False, [0, 5, 6, 15]),
    "W4_varlen_bias_silu": (4, True, True, 1, 15, False, [0, 5, 6, 15]),
    "W3_varlen_bias": (3, True, False, 1, 15, False, [0, 5, 6, 15]),
    "W4_varlen_empty_seq_silu": (4, False, True, 1, 15, False, [0, 5, 5, 6, 15]),
    "W4_varlen_two_chunks_silu": (4, True, True, 1, 75, False, [0, 3, 75]),
}
BF16_CASES = ["W4_bias_silu_state", "W4_varlen_bias_silu"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _run(conv, x, state, cu, backend, r_y, r_s):
    """Outputs, returned state and the gradients of ``sum(y * r_y) + sum(new_state * r_s)`` on one path."""
    old = blocks.SHORT_CONV_BACKEND
    blocks.SHORT_CONV_BACKEND = backend
    try:
        assert short_conv_uses_fla(x, state) == (backend == "fla")
        conv.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_(True)
        st = state.detach().clone().requires_grad_(True) if state is not None else None
        y, new_state = conv(x, cu_seqlens=cu, state=st)
        up = torch.promote_types(x.dtype, torch.float32)  # the loss in float32 (float64 for the float64 reference)
        ((y.to(up) * r_y.to(up)).sum() + (new_state.to(up) * r_s.to(up)).sum()).backward()
    finally:
        blocks.SHORT_CONV_BACKEND = old
    out = {"y": y.detach(), "state": new_state.detach(), "dx": x.grad, "dweight": conv.weight.grad}
    if conv.bias is not None:
        out["dbias"] = conv.bias.grad
    if st is not None:
        out["dstate"] = st.grad
    return out


def compare(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32, C: int = 24, scale_T: int = 1):
    """Relative errors (fla vs torch path) of every output and gradient of case ``name``, plus dtype checks.

    Below float32 also ``fla_vs_f64`` and ``torch_vs_f64``: each path's errors against the torch path in float64.
    """
    W, bias, act, B, T, with_state, cu = CASES[name]
    T *= scale_T
    gen = torch.Generator().manual_seed(0)
    conv = ShortConv(C, W, activation=act, bias=bias).to(device)
    x = torch.randn(B, T, C, generator=gen).to(device, dtype)
    state = torch.randn(B, C, W - 1, generator=gen).to(device, dtype) if with_state else None
    cu_t = torch.tensor([c * scale_T for c in cu], dtype=torch.int32, device=device) if cu is not None else None
    n = len(cu) - 1 if cu is not None else B
    r_y = torch.randn(B, T, C, generator=gen).to(device)
    r_s = torch.randn(n, C, W - 1, generator=gen).to(device)
    ref = _run(conv, x, state, cu_t, "torch", r_y, r_s)
    got = _run(conv, x, state, cu_t, "fla", r_y, r_s)
    assert got.keys() == ref.keys(), (got.keys(), ref.keys())
    err = {k: _rel(got[k], ref[k]) for k in ref}
    err["same_dtypes_and_shapes"] = float(
        any(got[k].dtype != ref[k].dtype or got[k].shape != ref[k].shape for k in ref)
        or got["y"].dtype != dtype
        or got["state"].shape != (n, C, W - 1)
        or not got["state"].is_contiguous()
    )
    if dtype != torch.float32:
        f64 = _run(copy.deepcopy(conv).double(), x.double(), state.double() if with_state else None, cu_t, "torch",
                   r_y, r_s)  # fmt: skip
        err["fla_vs_f64"] = {k: _rel(got[k], f64[k]) for k in ref}
        err["torch_vs_f64"] = {k: _rel(ref[k], f64[k]) for k in ref}
    return err


# ---- the interpreter worker: every CPU case in one process -------------------------------------------------


def _interpreter_shims():
    import numpy as np
    import triton.language as tl
    import triton.runtime.autotuner as at
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    at.Autotuner._bench = lambda self, *a, config=None, **k: [float(self.configs.index(config))] * 3
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store

    def as_bool(mask):
        if mask.data.dtype != np.bool_:
            assert np.isin(mask.data, (0, 1)).all(), "a non-0/1 integer mask"
            mask = TensorHandle(mask.data.astype(bool), tl.int1)
        return mask

    InterpreterBuilder.create_masked_load = lambda self, ptrs, mask, *a: load(self, ptrs, as_bool(mask), *a)
    InterpreterBuilder.create_masked_store = lambda self, ptrs, val, mask, *a: store(self, ptrs, val, as_bool(mask), *a)
    cast = InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:  # round to nearest even, as on GPU
            bits = torch.from_numpy(np.ascontiguousarray(src.data, np.float32)).to(torch.bfloat16).view(torch.int16)
            return TensorHandle(bits.numpy().view(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    InterpreterBuilder.cast_impl = cast_impl


def _probe() -> str | None:
    """None when fla's conv runs forward and backward under the interpreter, else why not."""
    try:
        from fla.modules.causal_conv1d.ops import causal_conv1d

        x = torch.randn(1, 6, 16, requires_grad=True)
        w = torch.randn(16, 4, requires_grad=True)
        h0 = torch.randn(1, 16, 4, requires_grad=True)
        y, ht = causal_conv1d(x, w, None, initial_state=h0, output_final_state=True, activation="silu")
        (y.sum() + ht.sum()).backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(h0.grad).all()
    except Exception as e:  # noqa: BLE001 - any failure of fla alone means: cannot test here
        return f"{type(e).__name__}: {e}"[:500]
    return None


def _worker():
    import warnings

    warnings.simplefilter("ignore")
    _interpreter_shims()
    why = _probe()
    if why is not None:
        print("SKIP " + json.dumps(why))
        return
    out = {name: compare(name) for name in CASES}
    out.update({f"{name}@bf16": compare(name, dtype=torch.bfloat16) for name in BF16_CASES})
    print("RESULT " + json.dumps(out))


if __name__ == "__main__" and "--interpret-worker" in sys.argv:
    _worker()


@pytest.fixture(scope="module")
def interp():
    if torch.cuda.is_available():
        pytest.skip("the GPU tests run the real kernels")
    if importlib.util.find_spec("fla") is None or importlib.util.find_spec("triton") is None:
        pytest.skip("flash-linear-attention (fla) or triton not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, HERE, "--interpret-worker"], env=env, capture_output=True, text=True, check=False,
                          timeout=600, cwd=ROOT)  # fmt: skip
    skip = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIP ")]
    if skip:
        pytest.skip("the Triton interpreter cannot run fla's causal_conv1d: " + json.loads(skip[-1][5:]))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"interpreter worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_fla_path_matches_torch_path(interp, case):
    err = interp[case]
    assert err.pop("same_dtypes_and_shapes") == 0.0
    expect = {"y", "state", "dx", "dweight"}
    _, bias, _, _, _, with_state, _ = CASES[case]
    expect |= {"dbias"} if bias else set()
    expect |= {"dstate"} if with_state else set()
    assert set(err) == expect
    assert max(err.values()) < TOL, err


def check_low_precision(err: dict) -> None:
    """bf16: same dtypes, identical states, y equal up to rare rounding flips, and gradients at least nearly as
    close to float64 as the torch path's (which rounds dx to bf16 once per tap; fla rounds it once)."""
    assert err.pop("same_dtypes_and_shapes") == 0.0
    fla64, torch64 = err.pop("fla_vs_f64"), err.pop("torch_vs_f64")
    assert err["state"] == 0.0 and err["y"] < 1e-3, err  # the state is a copy of inputs: no arithmetic
    for k in fla64:
        assert fla64[k] <= 1.5 * torch64[k] + 1e-5, (k, fla64, torch64)


@pytest.mark.parametrize("case", BF16_CASES)
def test_interpreter_fla_path_bf16(interp, case):
    check_low_precision(interp[f"{case}@bf16"])


# ---- dispatch and the state layout conversion (no interpreter) ---------------------------------------------


def test_state_layout_conversion():
    s = torch.randn(3, 5, 3)
    f = conv_state_to_fla(s)
    assert f.shape == (3, 5, 4)
    assert (f[..., 0] == 0).all() and torch.equal(f[..., 1:], s)  # fla's column 0 (input t-W) is never read
    back = conv_state_from_fla(torch.cat([torch.randn(3, 5, 1), s], -1))
    assert torch.equal(back, s) and back.is_contiguous()


def test_dispatch_rules(monkeypatch):
    x = torch.randn(1, 8, 4)
    for backend in ("auto", "torch"):
        monkeypatch.setattr(blocks, "SHORT_CONV_BACKEND", backend)
        assert short_conv_uses_fla(x, None) is (backend == "auto" and x.is_cuda)  # CPU tensors: PyTorch
    monkeypatch.setattr(blocks, "SHORT_CONV_BACKEND", "fla")
    state = torch.randn(1, 4, 3)
    assert short_conv_uses_fla(x.double(), None) is False  # float64 keeps the float64 reference
    assert short_conv_uses_fla(x[:, :1], state) is False  # a decode step
    assert short_conv_uses_fla(x[:, :0], None) is False
    monkeypatch.setattr(blocks, "SHORT_CONV_BACKEND", "triton")
    with pytest.raises(ValueError, match="SHORT_CONV_BACKEND"):
        short_conv_uses_fla(x, None)


@pytest.mark.parametrize("mixer", ["gated_deltanet", "mamba2"])
def test_reference_backend_always_runs_the_torch_conv(monkeypatch, mixer):
    """A mixer built with backend="reference" (what CUDA results are checked against) keeps the PyTorch conv
    whatever SHORT_CONV_BACKEND says; other calls follow SHORT_CONV_BACKEND."""
    from gkabench.layers import build_mixer

    calls = []
    monkeypatch.setattr(blocks, "SHORT_CONV_BACKEND", "fla")
    monkeypatch.setattr(ShortConv, "forward_fla", lambda self, *a, **k: calls.append(1) or self.forward_torch(*a, **k))
    monkeypatch.setattr(blocks, "fla_causal_conv1d", lambda: object())
    torch.manual_seed(0)
    m = build_mixer(mixer, 32, 2, 16, backend="reference")
    y, _ = m(torch.randn(1, 5, 32), use_cache=True)
    assert calls == [] and y.shape == (1, 5, 32)
    conv = ShortConv(8)
    blocks.conv_with_state(conv, torch.randn(1, 5, 8), None, None, None, False, reference=True)
    assert calls == []
    blocks.conv_with_state(conv, torch.randn(1, 5, 8), None, None, None, False)
    assert calls == [1]  # without reference=True the setting decides (on CUDA the triton backend passes False)


def test_cpu_auto_is_the_torch_path():
    torch.manual_seed(0)
    conv = ShortConv(6, 4, bias=True)
    x, st = torch.randn(2, 9, 6), torch.randn(2, 6, 3)
    y, s = conv(x, state=st)
    y_ref, s_ref = conv.forward_torch(x, state=st)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


# ---- the real kernels ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case,scale_T",
    [("W4_bias_silu_state", 40), ("W2_bias_silu_state", 40), ("W4_varlen_bias_silu", 40),
     ("W4_varlen_empty_seq_silu", 40), ("W4_short_T2_state", 1), ("W4_silu", 400)],
)  # fmt: skip
def test_gpu_fla_path_matches_torch_path(case, scale_T):
    if blocks.fla_causal_conv1d() is None:
        pytest.skip("fla not importable")
    # C=200 spans several channel tiles of any autotuned BD; scale_T stretches the sequences over many chunks
    err = compare(case, device="cuda", C=200, scale_T=scale_T)
    assert err.pop("same_dtypes_and_shapes") == 0.0
    assert max(err.values()) < TOL, err
    check_low_precision(compare(case, device="cuda", dtype=torch.bfloat16, C=200, scale_T=scale_T))


def test_auto_falls_back_to_torch_after_an_fla_failure(monkeypatch):
    """Under "auto" a failing fla conv is recorded once (one line, a RuntimeWarning) and every later call runs the
    PyTorch path, so a training run or sweep goes on; "fla" (forced) raises instead."""
    monkeypatch.setattr(blocks, "FLA_CONV_FAILURE", None)
    monkeypatch.setattr(blocks, "short_conv_uses_fla", lambda x, state: blocks.FLA_CONV_FAILURE is None)

    def broken(self, *a, **k):
        raise RuntimeError("triton: out of resources\nmore detail")

    monkeypatch.setattr(ShortConv, "forward_fla", broken)
    conv = ShortConv(8)
    x = torch.randn(1, 6, 8)
    ref = conv.forward_torch(x)[0]
    with pytest.warns(RuntimeWarning, match="PyTorch path"):
        y, _ = conv(x)
    torch.testing.assert_close(y, ref)
    assert blocks.FLA_CONV_FAILURE == "RuntimeError: triton: out of resources"
    assert blocks.short_conv_impl().startswith("torch (fla failed: RuntimeError")
    torch.testing.assert_close(conv(x)[0], ref)  # later calls: the PyTorch path, no new warning needed
    monkeypatch.setattr(blocks, "SHORT_CONV_BACKEND", "fla")
    monkeypatch.setattr(blocks, "short_conv_uses_fla", lambda x, state: True)
    with pytest.raises(RuntimeError, match="out of resources"):
        conv(x)
