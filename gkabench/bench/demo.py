"""``gkabench demo``: one quick side-by-side of every registered mixer, sized to the machine.

For each mixer at the same hidden size, heads and head dim: parameters, state bytes per sequence, forward and
forward+backward time of the full layer, tokens/s, and one-token decode latency with a cache. CPU-sized when
no GPU is present (the CPU runs the pure-PyTorch reference ops, so the numbers say nothing about GPU speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers import build_mixer, mixer_names
from .timing import peak_memory_of, time_fn


@dataclass(frozen=True)
class DemoSize:
    hidden_size: int
    num_heads: int
    head_dim: int
    batch: int
    seq_len: int
    dtype: torch.dtype

    @classmethod
    def for_device(cls, device: torch.device) -> DemoSize:
        if device.type == "cuda":
            return cls(hidden_size=2048, num_heads=16, head_dim=128, batch=4, seq_len=4096, dtype=torch.bfloat16)
        return cls(hidden_size=128, num_heads=2, head_dim=32, batch=2, seq_len=64, dtype=torch.float32)


def compare_mixers(device: torch.device, size: DemoSize, names: list[str] | None = None, progress=None) -> list[dict]:
    """Measure every mixer; a failure in one mixer is recorded in its row and the rest go on."""
    rows = []
    for name in names or mixer_names():
        row: dict = {"mixer": name}
        try:
            torch.manual_seed(0)
            mixer = build_mixer(name, size.hidden_size, size.num_heads, size.head_dim).to(device=device, dtype=size.dtype)
            x = torch.randn(size.batch, size.seq_len, size.hidden_size, device=device, dtype=size.dtype)
            row["params"] = sum(p.numel() for p in mixer.parameters())
            row["state_bytes"] = mixer.state_bytes(seq_len=size.seq_len, dtype=size.dtype)

            def fwd():
                with torch.no_grad():
                    mixer(x)

            xg = x.clone().requires_grad_(True)

            def fwdbwd():
                mixer.zero_grad(set_to_none=True)  # time one step, not a growing accumulation
                xg.grad = None
                y, _ = mixer(xg)
                y.float().sum().backward()

            t_fwd = time_fn(fwd, device)
            t_fb = time_fn(fwdbwd, device)
            tokens = size.batch * size.seq_len
            row["fwd_ms"] = t_fwd.median_ms
            row["fwdbwd_ms"] = t_fb.median_ms
            row["fwd_ktok_s"] = tokens / t_fwd.median_ms
            row["fwdbwd_ktok_s"] = tokens / t_fb.median_ms
            row["peak_mem_mib"] = (peak := peak_memory_of(fwdbwd, device)) and peak / 2**20
            with torch.no_grad():
                _, cache = mixer(x[:, :-1], use_cache=True)
                step = x[:, -1:]
                row["decode_ms"] = time_fn(lambda: mixer(step, cache=cache, use_cache=True), device).median_ms
            row["status"] = "ok"
        except torch.cuda.OutOfMemoryError:
            row["status"] = "OOM"
        except Exception as exc:  # one mixer failing must not stop the comparison
            row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        if progress is not None:
            progress(name)
    return rows
