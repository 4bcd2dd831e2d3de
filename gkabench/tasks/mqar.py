"""Multi-query associative recall (MQAR, as defined by Zoology): a cheap, exact probe of a mixer's memory.

One example of length ``seq_len`` (token 0 is filler)::

    k1 v1 k2 v2 ... kP vP | 0 0 kq1 vq1 0 0 0 0 kq2 vq2 ...
    \\___ 2P tokens ____/   \\__ queries: earlier keys at power-law distributed slots, each followed by its value

- keys are drawn without repetition from ``[1, vocab_size // 2)``, values (with repetition) from
  ``[vocab_size // 2, vocab_size)``: disjoint ranges, so a value never looks like a key;
- the query region is cut into slots of two tokens; ``num_queries`` (default all P) slots are chosen without
  replacement with probability ``~ (slot + 1) ** (alpha - 1)`` (alpha = 0.1, Zoology's default), so most queries sit
  close to the key-value pairs and a few far away; each chosen slot holds a key seen earlier and then its value;
- ``labels`` follow the transformers convention (aligned with ``input_ids``, shifted inside the loss): the value
  position of every query holds the value id, everything else -100. The model must predict the value at the
  query key's position.

Generation is vectorised in numpy and deterministic in ``seed``. Chance accuracy is ``2 / vocab_size``.

    batch = mqar_batch(MQARConfig(vocab_size=8192, seq_len=256, num_pairs=64), batch_size=64, seed=0)
    acc = mqar_accuracy(model(batch.input_ids).logits, batch.labels)

Training mixes easier pair counts in (:func:`curriculum_mixture`, as Zoology does); the sweep over mixers, dims,
lengths and learning rates is :mod:`gkabench.tasks.mqar_sweep`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 8192
    seq_len: int = 256
    num_pairs: int = 64
    num_queries: int | None = None  # default: every pair is queried once
    power_alpha: float = 0.1

    def __post_init__(self):
        q = self.queries
        if self.num_pairs < 1 or not 1 <= q <= self.num_pairs:
            raise ValueError(f"mqar: need num_pairs >= 1 and 1 <= num_queries <= num_pairs, got {self.num_pairs}, {q}")
        if self.vocab_size // 2 - 1 < self.num_pairs:
            raise ValueError(
                f"mqar: {self.num_pairs} distinct keys need vocab_size >= {2 * (self.num_pairs + 1)}, got {self.vocab_size}; raise --vocab"
            )
        if self.num_slots < q:
            raise ValueError(
                f"mqar: seq_len {self.seq_len} leaves {self.num_slots} query slots for {q} queries after {self.num_pairs} pairs; "
                f"use seq_len >= {2 * self.num_pairs + 2 * q}"
            )

    @property
    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def num_slots(self) -> int:
        return (self.seq_len - 2 * self.num_pairs) // 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MQARBatch:
    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, -100 except at the answers


def _slot_probs(cfg: MQARConfig) -> np.ndarray:
    w = np.arange(1, cfg.num_slots + 1, dtype=np.float64) ** (cfg.power_alpha - 1.0)
    return w / w.sum()


def mqar_batch(cfg: MQARConfig, batch_size: int, seed: int | tuple[int, ...] | np.random.SeedSequence) -> MQARBatch:
    """``batch_size`` MQAR examples, deterministic in ``seed`` (an int or a tuple of ints, e.g. (seed, batch_index)).

    Returns input_ids and labels ``[batch_size, seq_len]`` int64.
    """
    rng = np.random.default_rng(seed)
    B, P, Q, T = batch_size, cfg.num_pairs, cfg.queries, cfg.seq_len
    half = cfg.vocab_size // 2
    # Distinct keys per example: the P smallest of uniform noise over the key range (a uniform random P-subset;
    # argpartition is linear time), then put in random order.
    noise = rng.random((B, half - 1))
    subset = np.argpartition(noise, P - 1, axis=1)[:, :P] if P < half - 1 else np.tile(np.arange(half - 1), (B, 1))
    keys = np.take_along_axis(subset, np.argsort(rng.random((B, P)), axis=1), axis=1) + 1  # [B, P] in [1, half)
    values = rng.integers(half, cfg.vocab_size, size=(B, P))  # [B, P] in [half, vocab)
    ids = np.zeros((B, T), dtype=np.int64)
    ids[:, 0 : 2 * P : 2] = keys
    ids[:, 1 : 2 * P : 2] = values
    labels = np.full((B, T), -100, dtype=np.int64)

    # Query slots: Q of num_slots without replacement, power-law weights (Gumbel top-k == sequential sampling
    # without replacement), then sorted so queries appear in time order.
    logp = np.log(_slot_probs(cfg))
    gumbel = -np.log(-np.log(rng.random((B, cfg.num_slots))))
    slots = np.sort(np.argsort(-(logp + gumbel), axis=1)[:, :Q], axis=1)  # [B, Q]
    which = np.argsort(rng.random((B, P)), axis=1)[:, :Q]  # which pair each query asks for, random order
    q_pos = 2 * P + 2 * slots  # [B, Q]
    rows = np.arange(B)[:, None]
    ids[rows, q_pos] = np.take_along_axis(keys, which, axis=1)
    answers = np.take_along_axis(values, which, axis=1)
    ids[rows, q_pos + 1] = answers
    labels[rows, q_pos + 1] = answers
    return MQARBatch(torch.from_numpy(ids), torch.from_numpy(labels))


# Zoology trains MQAR on a mixture, not on the target alone: its standard run draws 100k examples with 4 pairs and
# 20k each with 8, 16, 32 and 64 pairs, and tests on 64 pairs. The easy examples teach the lookup quickly; from
# scratch on the target alone a small model sits on the loss plateau (log of the value range) for thousands of
# steps (session 4 on the H200: attention 1.5-5% after 3000 steps x 64). ``curriculum_mixture`` scales that
# mixture to any target: pairs P/16, P/8, P/4, P/2, P (at the target's length) with weights 5:1:1:1:1.
CURRICULUM_DIVISORS = (16, 8, 4, 2, 1)
CURRICULUM_WEIGHTS = (5, 1, 1, 1, 1)


def curriculum_mixture(cfg: MQARConfig) -> list[tuple[MQARConfig, float]]:
    """[(config, probability)]: Zoology's pair-count mixture scaled to ``cfg.num_pairs`` at ``cfg.seq_len``.

    Pair counts below 1 are dropped and repeated counts merged; every config queries all its pairs.
    """
    from dataclasses import replace

    weights: dict[int, float] = {}
    for div, w in zip(CURRICULUM_DIVISORS, CURRICULUM_WEIGHTS):
        pairs = cfg.num_pairs // div
        if pairs >= 1:
            weights[pairs] = weights.get(pairs, 0.0) + w
    total = sum(weights.values())
    return [(replace(cfg, num_pairs=p, num_queries=None if p < cfg.num_pairs else cfg.num_queries), w / total) for p, w in sorted(weights.items())]


def mqar_mixed_batch(mixture: list[tuple[MQARConfig, float]], batch_size: int, seed) -> MQARBatch:
    """``batch_size`` examples whose configs are drawn from ``mixture`` ([(config, probability)], equal seq_len).

    Deterministic in ``seed``; rows are shuffled so a micro-batch split sees the mixture too. ``[B, T]`` int64.
    """
    seed = seed if isinstance(seed, tuple) else (seed,)
    lengths = {c.seq_len for c, _ in mixture}
    if len(lengths) != 1:
        raise ValueError(f"mqar mixture: configs must share seq_len, got {sorted(lengths)}")
    rng = np.random.default_rng((*seed, 1))
    counts = rng.multinomial(batch_size, [p for _, p in mixture])
    parts = [mqar_batch(c, int(n), (*seed, 2, j)) for j, ((c, _), n) in enumerate(zip(mixture, counts)) if n > 0]
    order = torch.from_numpy(rng.permutation(batch_size))
    ids = torch.cat([b.input_ids for b in parts])[order]
    labels = torch.cat([b.labels for b in parts])[order]
    return MQARBatch(ids, labels)


@torch.no_grad()
def mqar_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over the answer positions: logits ``[B, T, V]`` at t predict labels ``[B, T]`` at t + 1."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:].to(pred.device)
    keep = target != -100
    return int((pred[keep] == target[keep]).sum()), int(keep.sum())


@torch.no_grad()
def evaluate_mqar(model, cfg: MQARConfig, num_examples: int = 1000, batch_size: int = 100, seed: int = 1_000_003, device=None) -> float:
    """Accuracy of ``model`` (a causal LM returning ``.logits``) on ``num_examples`` fresh MQAR examples."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for i in range(0, num_examples, batch_size):
        b = mqar_batch(cfg, min(batch_size, num_examples - i), (seed, i))
        c, t = mqar_accuracy(model(b.input_ids.to(device), use_cache=False).logits, b.labels)
        correct, total = correct + c, total + t
    model.train(was_training)
    return correct / max(total, 1)


# The sweep lives in :mod:`gkabench.tasks.mqar_sweep`; its public names stay importable from here.
_SWEEP_NAMES = frozenset({
    "MIXER_VARIANTS", "resolve_variant", "SweepConfig", "KEY_FIELDS", "run_key", "read_rows", "train_mqar_run",
    "current_rows", "best_per_cell", "write_markdown", "write_plot", "train_or_error_row", "parse_shard", "run_mqar_sweep",
})  # fmt: skip


def __getattr__(name: str):
    if name in _SWEEP_NAMES:
        from . import mqar_sweep

        return getattr(mqar_sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
