"""Imports every built-in mixer module so that each registers itself."""

from . import attention, gated_deltanet, gka, gla, mamba2, mesanet  # noqa: F401
