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


def test_zoology_attention_variants_change_one_thing_each_and_train(tmp_path):
    """attention_abspos: learned absolute positions (one per token of the run) and no RoPE; attention_nomlp: blocks
    without the MLP. Rows record the model settings."""
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config, run_mqar_sweep

    mixers = ["attention_abspos", "attention_nomlp", "attention_zoology", "attention"]
    sweep = SweepConfig.defaults_for(
        False, mixers=mixers, dims=[16], lengths=[(24, 4)], lrs=[1e-2], vocab_size=32, steps=3,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="t",
    )  # fmt: skip
    cfgs = {run["mixer"]: mqar_train_config(run, sweep)[0] for run in sweep.runs()}
    assert (cfgs["attention_abspos"].learned_positions, cfgs["attention_abspos"].mixer_options) == (24, {"attention": {"use_rope": False}})
    assert (cfgs["attention_nomlp"].intermediate_size, cfgs["attention_nomlp"].learned_positions) == (0, 0)
    assert (cfgs["attention"].learned_positions, cfgs["attention"].intermediate_size, cfgs["attention"].mixer_options) == (0, None, {})
    rows = {r["mixer"]: r for r in run_mqar_sweep(sweep)}
    assert rows["attention_abspos"]["model_options"] == {"learned_positions": 24} and rows["attention"]["model_options"] == {}
    assert rows["attention_abspos"]["params"] == rows["attention"]["params"] + 24 * 16
    # each of the 2 blocks loses its SwiGLU (3 matrices of 16 x 64: the default width for hidden 16) and its norm
    assert rows["attention_nomlp"]["params"] == rows["attention"]["params"] - 2 * (3 * 16 * 64 + 16)
    z = cfgs["attention_zoology"]
    assert (z.learned_positions, z.intermediate_size, z.embed_dropout, z.mixer_options) == (24, 0, 0.1, {"attention": {"use_rope": False, "dropout": 0.1}})
    assert rows["attention_zoology"]["params"] == rows["attention_nomlp"]["params"] + 24 * 16
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())
