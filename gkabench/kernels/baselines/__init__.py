"""Pure-PyTorch references of the baseline ops (Gated DeltaNet, GLA, simple GLA / Mamba2 SSD, MesaNet).

Same call signatures and conventions as flash-linear-attention 0.6.0's ops, which the layers use on CUDA;
these run on CPU and are the float64 oracle for ``gkabench check``. See :mod:`.reference`.
"""

from .reference import (
    MESA_CG_EPS,
    chunk_gated_delta_rule,
    chunk_gla,
    chunk_mesa_net,
    chunk_simple_gla,
    mesa_cg_solve,
    mesa_exact_solve,
    mesa_net_exact,
    state_dtype_for,
)

__all__ = [
    "MESA_CG_EPS",
    "chunk_gated_delta_rule",
    "chunk_gla",
    "chunk_mesa_net",
    "chunk_simple_gla",
    "mesa_cg_solve",
    "mesa_exact_solve",
    "mesa_net_exact",
    "state_dtype_for",
]
