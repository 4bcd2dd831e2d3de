"""Token mixers on one registry: gka, gated_deltanet, gla, mamba2, mesanet, attention."""

from .base import BACKENDS, Mixer, MixerCache
from .registry import (
    MixerSpec,
    UnknownMixerError,
    build_mixer,
    get_mixer_spec,
    mixer_names,
    parse_mixer_list,
    register_mixer,
)

__all__ = [
    "BACKENDS",
    "Mixer",
    "MixerCache",
    "MixerSpec",
    "UnknownMixerError",
    "build_mixer",
    "get_mixer_spec",
    "mixer_names",
    "parse_mixer_list",
    "register_mixer",
]
