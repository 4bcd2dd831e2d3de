"""flash-linear-attention's Hopper guard on gated backward, detected and (deliberately) lifted.

fla 0.6.0 refuses the backward of gated chunk ops on Hopper GPUs with 3.4.0 <= Triton < 3.7.1:
``fla.ops.common.chunk_o.chunk_bwd_dqkwg`` raises a RuntimeError when ``g is not None`` (a Triton
miscompile at block size 64, fla issue #640). Of the ops our baselines use, two reach that function:

- ``chunk_gated_delta_rule`` (Gated DeltaNet), unless TileLang is installed: fla then routes this
  function to its TileLang backend;
- ``chunk_simple_gla`` with a per-token ``g`` (our Mamba2); its backward keeps ``h`` in fp32, which the
  TileLang backend rejects, so it always falls to the guarded Triton kernel.

``chunk_gla`` (own backward kernels in ``fla/ops/gla/chunk.py``) and ``chunk_mesa_net`` do not call it.
Forward passes are never affected. Nothing here imports fla unless a CUDA device is present.
"""

from __future__ import annotations

import importlib.util
import sys

import torch

# Set by lift_fla_hopper_guard() so that results can record that the guard was lifted.
GUARD_LIFTED = False


def hopper_guard_active() -> bool:
    """True when fla's gated-backward guard would raise here (CUDA, Hopper, 3.4.0 <= Triton < 3.7.1)."""
    if not torch.cuda.is_available():
        return False
    try:
        from fla.ops.common import chunk_o
    except Exception:  # noqa: BLE001 - fla absent or broken: no guard to speak of
        return False
    return bool(chunk_o.IS_NVIDIA_HOPPER and chunk_o.TRITON_ABOVE_3_4_0 and not chunk_o.TRITON_ABOVE_3_7_1)


def hopper_guard_issues(op: str, tilelang_bypasses: bool) -> list[str]:
    """The known-issue lines for a mixer whose CUDA op ``op`` reaches the guarded backward."""
    if not torch.cuda.is_available():
        return []
    if GUARD_LIFTED:
        return [f"{op}: fla's Hopper/Triton<3.7.1 gated-backward guard was LIFTED by lift_fla_hopper_guard(); "
                "gradients are trusted only for shapes that `gkabench check` passed"]  # fmt: skip
    if not hopper_guard_active():
        return []
    if tilelang_bypasses and importlib.util.find_spec("tilelang") is not None:
        return []
    import triton

    return [
        f"{op}: fla 0.6.0 refuses the gated backward on Hopper with Triton {triton.__version__} < 3.7.1 "
        "(fla/ops/common/chunk_o.py chunk_bwd_dqkwg, fla issue #640); forward and decoding work. "
        "Fix: upgrade Triton to >= 3.7.1"
        + (" or install tilelang" if tilelang_bypasses else "")
        + ", or, after `gkabench check` passes for the shapes used, call gkabench.layers.fla_guard.lift_fla_hopper_guard()"
    ]


def lift_fla_hopper_guard() -> bool:
    """Disable fla's refusal of gated backward on Hopper with Triton < 3.7.1; return whether it was active.

    Sets ``TRITON_ABOVE_3_7_1 = True`` in ``fla.ops.common.chunk_o`` (the module whose guard raises) and in
    every other loaded ``fla`` module holding a copy of that flag, so the guarded Triton kernel runs.

    Only acceptable after ``gkabench check`` passed (gradients against the float64 reference) on this GPU,
    Triton version and the exact shapes used, because the guard exists for a real miscompile. Any result
    produced with the guard lifted must record it (``GUARD_LIFTED`` is set, and the mixers' known issues say so).
    Returns False, changing nothing that matters, where the guard was not active (no CUDA, not Hopper, or a
    Triton >= 3.7.1).
    """
    global GUARD_LIFTED
    was_active = hopper_guard_active()
    if not torch.cuda.is_available():
        return False
    import fla.ops.common.chunk_o  # noqa: F401 - make sure the guarded module is loaded before patching

    for name, module in list(sys.modules.items()):
        if (name == "fla" or name.startswith("fla.")) and module is not None and hasattr(module, "TRITON_ABOVE_3_7_1"):
            module.TRITON_ABOVE_3_7_1 = True
    if was_active:
        GUARD_LIFTED = True
    return was_active
