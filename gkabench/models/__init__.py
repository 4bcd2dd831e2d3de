"""HF-compatible causal LMs stacking any registered mixer (``model_type = "gkabench"``, registered with
``AutoConfig`` / ``AutoModelForCausalLM`` on import)."""

from .configuration import GKABenchConfig, expand_pattern
from .modeling import GKABenchCache, GKABenchForCausalLM, GKABenchModel, causal_lm_loss, register_auto
from .presets import PRESETS, preset_config

__all__ = [
    "PRESETS",
    "GKABenchCache",
    "GKABenchConfig",
    "GKABenchForCausalLM",
    "GKABenchModel",
    "causal_lm_loss",
    "expand_pattern",
    "preset_config",
    "register_auto",
]
