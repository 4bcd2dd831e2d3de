"""MQAR sweep variants: named mixer configurations resolve to a registered mixer plus options that build."""

import pytest
import torch

from gkabench.layers import build_mixer
from gkabench.tasks.mqar_sweep import MIXER_VARIANTS, resolve_variant


@pytest.mark.parametrize("name", sorted(MIXER_VARIANTS))
def test_variants_build_and_run(name):
    base, opts = resolve_variant(name)
    mixer = build_mixer(base, 32, None, 16, **opts)
    y, _ = mixer(torch.randn(2, 8, 32))
    assert y.shape == (2, 8, 32) and torch.isfinite(y).all()


def test_gla_conv_has_short_conv_and_gla_has_none():
    base, opts = resolve_variant("gla_conv")
    with_conv = build_mixer(base, 32, None, 16, **opts)
    assert any("conv" in n for n, _ in with_conv.named_modules())
    assert not any("conv" in n for n, _ in build_mixer("gla", 32, None, 16).named_modules())


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="gka_plain"):
        resolve_variant("no_such_mixer")
