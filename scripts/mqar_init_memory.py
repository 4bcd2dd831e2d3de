"""How far back each decaying head of an MQAR grid model remembers at initialisation.

    PYTHONPATH=. python3 scripts/mqar_init_memory.py [--mixers gka,gated_deltanet,mamba2] [--length 1024] [--seed 0]

Builds each grid model exactly as the sweep's run would (same config, same seed, so the same initial weights) and
prints, per layer and head, the half-life in tokens of its forgetting gate at initialisation: ln 2 / (A * dt),
A = exp(A_log), dt = softplus(dt_bias), leaving out the input-dependent part of the gate (a projection of the
input added to dt_bias before the softplus): a head's typical memory, not each token's. A head that must recall a
key ~1000 tokens back starts with this much memory and has to learn the rest. CPU is enough: nothing trains.
"""

from __future__ import annotations

import argparse
import math

import torch


def half_lives(model) -> list[list[float]]:
    """Per layer, per head: ln 2 / (exp(A_log) * softplus(dt_bias)) of the mixer's gate, in tokens."""
    out = []
    for layer in model.model.layers:
        gate = next(m for m in layer.mixer.modules() if hasattr(m, "A_log") and hasattr(m, "dt_bias"))
        rate = gate.A_log.detach().double().exp() * torch.nn.functional.softplus(gate.dt_bias.detach().double())
        out.append([math.log(2) / r for r in rate.tolist()])
    return out


def main() -> None:
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config
    from gkabench.tokenizers import load_tokenizer
    from gkabench.train import build_model, build_source

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixers", default="gka,gated_deltanet,mamba2")
    ap.add_argument("--length", type=int, default=1024, help="the grid's length (the model does not depend on it)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sweep = SweepConfig.defaults_for(True, head_dim=64)
    for mixer in args.mixers.split(","):
        for dim in sweep.dims:
            run = next(
                r for r in sweep.runs() if r["mixer"] == mixer and r["dim"] == dim and r["seq_len"] == args.length
            )
            cfg, _, _ = mqar_train_config({**run, "seed": args.seed}, sweep)
            tokenizer = load_tokenizer(cfg.tokenizer)
            source = build_source(cfg, tokenizer)
            torch.manual_seed(cfg.seed)  # as train() does before building the model
            model = build_model(cfg, source.vocab_size, tokenizer)
            layers = " | ".join(" ".join(f"{h:.0f}" for h in heads) for heads in half_lives(model))
            print(f"{mixer:15} d={dim:<4} half-life in tokens per head, layer by layer: {layers}")


if __name__ == "__main__":
    main()
