"""What a speed sweep measures: parsed options, presets and the per-device defaults of ``gkabench speed``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

MIXERS = ("gka", "gated_deltanet", "gla", "mamba2", "mesanet", "attention")  # the six compared mixers
LEVELS = ("op", "layer")
MODES = ("fwd", "fwdbwd", "prefill", "decode")
PRESETS = {
    "matched": "every mixer at the same heads and head dim (state sizes comparable)",
    "paper": "each baseline at its registry (flash-linear-attention) defaults, as the GKA paper ran them",
}
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64}  # fmt: skip


def parse_size(text: str) -> int:
    """``"4k"`` -> 4096, ``"1m"`` -> 1048576, ``"512"`` -> 512. Raises a one-line ValueError."""
    t = text.strip().lower()
    m = re.fullmatch(r"(\d+)\s*([km]?)", t)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"bad size {text!r}: use a positive integer with an optional k/m suffix, e.g. 512, 4k, 128k")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]


def parse_lengths(text: str | None, default: list[int] | None = None) -> list[int]:
    """``"1k,2k,8k"`` -> ``[1024, 2048, 8192]`` (sorted, unique); ``"1k..8k"`` doubles from 1k up to 8k.
    None/empty -> ``default``."""
    if text is None or not text.strip():
        return list(default or [])
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"bad lengths {text!r}: give a comma-separated list such as 1k,2k,4k (or 1k..32k)")
    out: set[int] = set()
    for p in parts:
        if ".." in p:
            lo, _, hi = p.partition("..")
            a, b = parse_size(lo), parse_size(hi)
            if b < a:
                raise ValueError(f"bad length range {p.strip()!r}: the end must not be below the start")
            while a <= b:
                out.add(a)
                a *= 2
        else:
            out.add(parse_size(p))
    return sorted(out)


def parse_choices(text: str | None, valid: tuple[str, ...], what: str) -> list[str]:
    """``"fwd,decode"`` -> ``["fwd", "decode"]``; None / ``"all"`` -> every valid choice."""
    if text is None or text.strip() in ("", "all"):
        return list(valid)
    out = [p.strip() for p in text.split(",") if p.strip()]
    for p in out:
        if p not in valid:
            raise ValueError(f"unknown {what} {p!r}; choose from {', '.join(valid)}")
    return out


def parse_mixers(text: str | None) -> list[str]:
    """Mixer names: the six compared mixers plus anything else registered. Unknown names raise."""
    valid = list(MIXERS)
    try:
        from ..layers import mixer_names

        valid += [n for n in mixer_names() if n not in valid]
    except ImportError:  # the baseline layer modules may not be importable yet; op level still works
        pass
    if text is None or text.strip() in ("", "all"):
        return valid
    out = [p.strip() for p in text.split(",") if p.strip()]
    for p in out:
        if p not in valid:
            raise ValueError(f"unknown mixer {p!r}; valid names: {', '.join(valid)}")
    return out


def parse_dtype(text: str | None, device: torch.device) -> torch.dtype:
    if text is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if text not in DTYPES:
        raise ValueError(f"unknown dtype {text!r}; choose one of bf16, fp16, fp32, fp64")
    return DTYPES[text]


@dataclass
class SpeedConfig:
    """One sweep. Lengths are per mode group: ``lengths`` for fwd / fwdbwd, ``prefill_lengths``, ``decode_lengths``."""

    device: str
    dtype: str
    mixers: list[str]
    levels: list[str]
    modes: list[str]
    lengths: list[int]
    prefill_lengths: list[int]
    decode_lengths: list[int]
    decode_batches: list[int]
    tokens: int | None  # token budget per call (B = tokens // T, at least 1); None -> fixed batch
    batch: int | None
    heads: int
    head_dim: int
    hidden: int
    num_iter: int = 30
    preset: str = "matched"
    input_sets: int = 3  # rotated inputs, so caches do not flatter
    warmup_ms: float = 25
    rep_ms: float = 100
    min_reps: int = 3  # CPU only (CUDA: do_bench decides)
    max_call_s: float = 3.0  # one call slower than this: cell marked slow, longer T of that series skipped
    max_minutes: float | None = None
    lift_fla_guard: bool = False
    fla_guard_lifted: bool = False
    tag: str = ""
    extra: dict = field(default_factory=dict)

    def batch_for(self, T: int) -> int:
        if self.batch is not None:
            return self.batch
        return max(1, (self.tokens or T) // T)

    def lengths_for(self, mode: str) -> list[int]:
        return {"prefill": self.prefill_lengths, "decode": self.decode_lengths}.get(mode, self.lengths)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def header(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["sizes"] = sizes_fingerprint(d)
        return d

    @property
    def sizes(self) -> str:
        return sizes_fingerprint(asdict(self))


def sizes_fingerprint(d: dict) -> str:
    """The sizes a cell's numbers depend on besides (level, mode, mixer, T, decode batch), as one short string,
    e.g. ``"heads16-hdim128-hidden2048-tokens32768-iter30"`` (``batch8`` instead of ``tokens...`` for a fixed
    batch). Built from a config or its header dict; rows carry it as ``sizes`` and resume matches on it."""
    budget = f"batch{d.get('batch')}" if d.get("batch") is not None else f"tokens{d.get('tokens')}"
    return f"heads{d.get('heads')}-hdim{d.get('head_dim')}-hidden{d.get('hidden')}-{budget}-iter{d.get('num_iter')}"


def default_config(device: torch.device) -> dict:
    """Per-device defaults: the standard GPU sweep, or a CPU sweep that finishes in well under 2 minutes."""
    if device.type == "cuda":
        return {
            "lengths": [1024 * 2**i for i in range(6)],  # 1k .. 32k
            "prefill_lengths": [1024 * 2**i for i in range(8)],  # 1k .. 128k
            "decode_lengths": [2048, 32768, 131072],
            "decode_batches": [1, 8, 64],
            "tokens": 32768, "heads": 16, "head_dim": 128, "hidden": 2048, "num_iter": 30,
            "warmup_ms": 25, "rep_ms": 100, "max_call_s": 3.0, "min_reps": 3,
        }  # fmt: skip
    return {
        "lengths": [32, 64],
        "prefill_lengths": [32, 64],
        "decode_lengths": [64],
        "decode_batches": [1, 4],
        "tokens": 128, "heads": 2, "head_dim": 16, "hidden": 32, "num_iter": 10,
        "warmup_ms": 0, "rep_ms": 50, "max_call_s": 5.0, "min_reps": 5,
    }  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}[dtype]
