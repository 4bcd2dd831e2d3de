"""Model size presets (shapes only; the vocabulary comes from the tokenizer or task at train time).

Parameter counts, computed with :func:`count_params` (meta device) at a 32k vocabulary, untied embeddings:

| preset | layers | hidden | heads x head dim | MLP | gka | attention | gated_deltanet | gla | mamba2 | mesanet |
|---|---|---|---|---|---|---|---|---|---|---|
| tiny | 2 | 64 | 2 x 32 | 128 | (tests) | | | | | |
| 125m | 12 | 768 | 6 x 128 | 2048 | 141.4M | 134.1M | 162.7M | 162.7M | 129.5M | 134.3M |
| 440m | 28 | 1024 | 8 x 128 | 2816 | 455.4M | 425.3M | 543.6M | 543.6M | 403.7M | 426.0M |

The 440m row is the GKA paper's smallest model (28 layers, hidden 1024, head dim 128). Every mixer is built
with the same ``num_heads x head_dim``, so the counts differ by the mixers' own projections
(gated_deltanet and gla expand values 2x at a given head count, as in flash-linear-attention). With a tied head
subtract 24.6M (125m) / 32.8M (440m); with the 259-token byte tokenizer subtract almost all of the 2 x 32k x
hidden embedding weights.
"""

from __future__ import annotations

import torch

PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, head_dim=32, intermediate_size=128),
    "125m": dict(hidden_size=768, num_layers=12, num_heads=6, head_dim=128, intermediate_size=2048, tie_word_embeddings=False),
    "440m": dict(hidden_size=1024, num_layers=28, num_heads=8, head_dim=128, intermediate_size=2816, tie_word_embeddings=False),
}


def preset_config(name: str, **overrides):
    """A :class:`GKABenchConfig` of preset ``name`` with ``overrides`` (e.g. ``mixer="gka"``, ``vocab_size``)."""
    from .configuration import GKABenchConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GKABenchConfig(**{**PRESETS[name], **overrides})


def count_params(config) -> int:
    """Parameters of the causal LM built from ``config`` (built on the meta device: no memory, no init).
    A tied head counts once."""
    from .modeling import GKABenchForCausalLM

    with torch.device("meta"):
        model = GKABenchForCausalLM(config)
    return sum(p.numel() for p in model.parameters())
