"""What ``gkabench layers`` reports: per registered mixer, parameters per layer and recurrent state bytes per
sequence at a stated size, the backends that run on this machine, and known issues detected here."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .registry import build_mixer, get_mixer_spec, mixer_names


@dataclass
class MixerInfo:
    name: str
    summary: str
    num_heads: int
    head_dim: int
    params: int
    state_bytes: int
    backends: list[str]
    cuda_op: str
    cpu_op: str
    known_issues: list[str]


@functools.lru_cache(maxsize=None)
def triton_backend_available(name: str) -> tuple[bool, str]:
    """Can the CUDA (Triton) path of mixer ``name`` run here? Returns (ok, reason when not)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton not installed"
    if name == "gka":
        from ..kernels.gka import triton_available

        return (True, "") if triton_available() else (False, "GKA Triton kernels not built")
    if name == "attention":
        return True, ""
    try:
        import fla  # noqa: F401
    except ImportError:
        return False, "flash-linear-attention not installed"
    return True, ""


def mixer_inventory(
    hidden_size: int = 2048,
    num_heads: int | None = None,
    head_dim: int | None = None,
    seq_len: int = 2048,
    dtype: torch.dtype = torch.bfloat16,
    names: list[str] | None = None,
) -> list[MixerInfo]:
    """Build each mixer on the meta device (no memory) and read its sizes."""
    rows = []
    for name in names or mixer_names():
        spec = get_mixer_spec(name)
        with torch.device("meta"):
            mixer = build_mixer(name, hidden_size, num_heads, head_dim)
        params = sum(p.numel() for p in mixer.parameters())
        ok, why = triton_backend_available(name)
        backends = ["reference"] + (["triton"] if ok else [f"not triton ({why})"])
        issues = list(spec.known_issues()) if spec.known_issues else []
        rows.append(
            MixerInfo(
                name=name,
                summary=spec.summary,
                num_heads=mixer.num_heads,
                head_dim=mixer.head_dim,
                params=params,
                state_bytes=mixer.state_bytes(seq_len=seq_len, dtype=dtype),
                backends=backends,
                cuda_op=spec.cuda_op,
                cpu_op=spec.cpu_op,
                known_issues=issues,
            )
        )
    return rows
