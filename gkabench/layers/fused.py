"""Fused elementwise ops for training: RMSNorm, gated RMSNorm and SwiGLU's gate, each compiled by torch.compile
into one kernel forward and one backward.

Why: a small model's training step on a GPU is bound by the memory traffic of unfused elementwise PyTorch ops
(H200, MQAR at 512 tokens, d = 128, batch 256: about half of every mixer's step is elementwise kernels of norms,
gates and casts; ``scripts/mqar_step_profile.py``). The math is in :mod:`gkabench.layers.blocks` (``rms_norm``,
``gated_rms_norm``, ``silu_mul``); :func:`fused_call` decides per call whether it runs compiled;
:func:`check_fused_ops` compares the compiled ops with float64 eager.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

# Which path fused_call takes (read at every call; tests monkeypatch it; GKABENCH_FUSED_ELEMENTWISE sets it):
# - "off" (default): always eager;
# - "auto": compiled for CUDA tensors while autograd records (training); eager otherwise (eval, decode, CPU);
# - "always": compiled on any device (tests, with FUSED_BACKEND = "aot_eager": no C++ compiler needed).
# Off by default because one process alone does not gain: H200, GKA at 512 tokens, d = 128, batch 256: kernel time
# per training step 22.0 -> 16.1 ms, but one process is host-bound either way (session 9: 26.2 ms wall both ways;
# session 7: 28.7 -> 32.7 ms). With two runs sharing the GPU (the MQAR sweep's --jobs 2) the kernel time is what
# counts: 39.4 -> 53.8 steps/s (1.36x, session 9), so the MQAR device sweeps turn it on (FUSED=1).
FUSED_ELEMENTWISE = os.environ.get("GKABENCH_FUSED_ELEMENTWISE", "off")
FUSED_BACKEND = "inductor"
FUSED_FAILURE: str | None = None  # why compiling failed once; then every call runs eager


@functools.cache
def _compiled(fn):
    return torch.compile(fn, backend=FUSED_BACKEND, fullgraph=True)


def fused_call(fn, x: torch.Tensor, *args):
    """``fn(x, *args)``, through torch.compile where :data:`FUSED_ELEMENTWISE` says so, else eager."""
    global FUSED_FAILURE
    mode = FUSED_ELEMENTWISE
    use = mode == "always" or (mode == "auto" and x.is_cuda and torch.is_grad_enabled())
    if use and FUSED_FAILURE is None and x.dtype != torch.float64:
        try:
            return _compiled(fn)(x, *args)
        except Exception as exc:  # a compiler failure must not stop training: eager computes the same
            FUSED_FAILURE = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            warnings.warn(f"torch.compile of {fn.__name__} failed ({FUSED_FAILURE}); running eager PyTorch ops", stacklevel=2)
    return fn(x, *args)


def fused_impl() -> str:
    """What CUDA training runs for norms and gates now: ``"compiled"``, ``"eager"`` or ``"eager (compile failed: ...)"``."""
    if FUSED_ELEMENTWISE == "off":
        return "eager"
    return f"eager (compile failed: {FUSED_FAILURE})" if FUSED_FAILURE else "compiled"


# Largest error of a compiled op against float64, relative to the reference's largest magnitude: float32 inputs keep
# float32 (seen: <= 2e-6); bfloat16 inputs round output and gradients to bf16 (2^-8 each, seen: <= 4e-3).
FUSED_OP_TOL = {"float32": 1e-4, "bfloat16": 1.6e-2}


def check_fused_ops(device: str = "cuda") -> dict:
    """Each op compiled (whatever :data:`FUSED_ELEMENTWISE` says) against float64 eager on random data, forward and
    gradients. Returns ``{"rms_norm float32": err, ..., "impl": fused_impl(), "pass": bool}``."""
    from .blocks import gated_rms_norm, rms_norm, silu_mul  # blocks imports this module: import at call time

    global FUSED_ELEMENTWISE
    saved, FUSED_ELEMENTWISE = FUSED_ELEMENTWISE, "always"
    out: dict = {}
    try:
        gen = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            x = (3 * torch.randn(4, 64, 8, 64, generator=gen)).to(device)
            gate, up = torch.randn(2, *x.shape, generator=gen).to(device)
            w = (1 + 0.1 * torch.randn(64, generator=gen)).to(device)
            cases = {
                "rms_norm": (rms_norm, (x.to(dtype), w, 1e-6, dtype)),
                "gated_rms_norm": (gated_rms_norm, (x.to(dtype), gate.to(dtype), w, 1e-5)),
                "silu_mul": (silu_mul, (gate.to(dtype), up.to(dtype))),
            }
            for name, (fn, args) in cases.items():
                got_in = [a.detach().clone().requires_grad_() if torch.is_tensor(a) else a for a in args]
                ref_in = [a.detach().double().requires_grad_() if torch.is_tensor(a) else (torch.float64 if a is dtype else a) for a in args]
                got, ref = fused_call(fn, *got_in), fn(*ref_in)
                seed = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device)
                got.backward(seed.to(got.dtype))
                ref.backward(seed)
                pairs = [(got, ref)] + [(g.grad, r.grad) for g, r in zip(got_in, ref_in) if torch.is_tensor(g)]
                out[f"{name} {str(dtype).removeprefix('torch.')}"] = max(((g.double() - r).abs().max() / r.abs().max()).item() for g, r in pairs)
    finally:
        FUSED_ELEMENTWISE = saved
    out["impl"] = "compiled" if FUSED_FAILURE is None else f"eager (compile failed: {FUSED_FAILURE})"
    out["pass"] = out["impl"] == "compiled" and all(v < FUSED_OP_TOL[k.split()[1]] for k, v in out.items() if k not in ("impl", "pass"))
    return out
