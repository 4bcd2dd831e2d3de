"""One registry of token mixers, read by every subcommand (layers, check, speed, train, eval).

    from gkabench.layers import build_mixer, mixer_names
    mixer = build_mixer("gka", hidden_size=1024, num_heads=8, head_dim=128, use_beta=False)

``num_heads`` / ``head_dim`` left as None take the mixer's own defaults (flash-linear-attention's layer
defaults for the baselines, the paper's for GKA), scaled to ``hidden_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Mixer


class UnknownMixerError(ValueError):
    """An unknown mixer name; the message lists the valid ones."""


@dataclass(frozen=True)
class MixerSpec:
    name: str
    cls: type[Mixer]
    summary: str
    cuda_op: str  # the Triton op used on CUDA
    cpu_op: str  # the pure-PyTorch op used on CPU
    defaults: dict = field(default_factory=dict)  # documented default options
    known_issues: Callable[[], list[str]] | None = None  # detected at run time (e.g. Triton version guards)


_REGISTRY: dict[str, MixerSpec] = {}


def register_mixer(name: str, *, summary: str, cuda_op: str, cpu_op: str, defaults: dict | None = None, known_issues=None):
    """Class decorator adding a :class:`Mixer` subclass to the registry under ``name``."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY:
            raise ValueError(f"mixer {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = MixerSpec(name, cls, summary, cuda_op, cpu_op, dict(defaults or {}), known_issues)
        return cls

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers the built-in mixers.
    from . import _builtin  # noqa: F401


# Tables list the built-in mixers in this order whatever order their modules were imported in; mixers
# registered by users follow, in registration order.
DISPLAY_ORDER = ("gka", "gated_deltanet", "gla", "mamba2", "mesanet", "attention")


def mixer_names() -> list[str]:
    _ensure_loaded()
    rank = {n: i for i, n in enumerate(DISPLAY_ORDER)}
    return sorted(_REGISTRY, key=lambda n: rank.get(n, len(rank)))


def get_mixer_spec(name: str) -> MixerSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UnknownMixerError(f"unknown mixer {name!r}; valid names: {', '.join(mixer_names())}")
    return _REGISTRY[name]


def parse_mixer_list(text: str | None) -> list[str]:
    """``"gka,gla"`` -> ``["gka", "gla"]``; None / ``"all"`` -> every mixer. Unknown names raise."""
    if text is None or text.strip() in ("", "all"):
        return mixer_names()
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        get_mixer_spec(n)
    return names


def build_mixer(
    name: str,
    hidden_size: int,
    num_heads: int | None = None,
    head_dim: int | None = None,
    *,
    backend: str = "auto",
    layer_idx: int | None = None,
    **options,
) -> Mixer:
    """Build the registered mixer ``name``. All mixers share one forward signature and one cache protocol
    (see :mod:`gkabench.layers.base`). Extra ``options`` go to the mixer's constructor."""
    spec = get_mixer_spec(name)
    try:
        return spec.cls(hidden_size, num_heads=num_heads, head_dim=head_dim, backend=backend, layer_idx=layer_idx, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        import inspect

        params = [p for p in inspect.signature(spec.cls.__init__).parameters if p not in ("self", "hidden_size", "num_heads", "head_dim", "backend", "layer_idx")]
        bad = str(exc).split("argument")[-1].strip()
        raise ValueError(f"{name}: unknown option {bad}; valid: {', '.join(params)}") from None
