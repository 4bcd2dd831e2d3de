"""Fitting a long-context input to an exact token budget with the model's own tokenizer.

An input is built from a fixed part (instructions, demos, question, gold passages or needles) and a variable
number ``k`` of filler units (distractor passages or haystack sentences), drawn lazily in a fixed order. We want
the largest ``k`` with ``tokens(build(k)) <= L`` and require ``tokens >= min_frac * L`` (0.9, as the issue asks):

1. draw units until the estimated length (fixed part + per-unit token counts, batched) passes ``L``;
2. build, count exactly, and step ``k`` down (or up) by the estimated surplus until the exact count fits; the
   estimate is off only by merges across joins, so this converges in one or two exact counts.

Token counts include the special tokens the tokenizer adds (``add_special_tokens=True``), i.e. what the model is
fed. The byte tokenizer takes a fast path (tokens = UTF-8 bytes), so 128k-token inputs fit in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable


def parse_length(text: str) -> int:
    """``"4k"`` -> 4096, ``"128k"`` -> 131072, ``"1000"`` -> 1000 (k = 1024, as HELMET/RULER lengths are)."""
    t = text.strip().lower()
    try:
        if t.endswith("k"):
            return int(float(t[:-1]) * 1024)
        if t.endswith("m"):
            return int(float(t[:-1]) * 1024 * 1024)
        return int(t)
    except ValueError:
        raise ValueError(f"--lengths: could not read {text!r}; pass e.g. --lengths 4k,8k,16k or 512,1024") from None


def parse_lengths(text: str) -> list[int]:
    out = [parse_length(t) for t in text.split(",") if t.strip()]
    if not out or any(n <= 0 for n in out):
        raise ValueError(f"--lengths: need positive lengths, got {text!r}; pass e.g. --lengths 4k,8k")
    return out


def format_length(n: int) -> str:
    """4096 -> ``4k``; other values as they are."""
    return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else str(n)


def tokenizer_hash(tokenizer) -> str:
    """A short hash of what the tokenizer does (its serialised fast-tokenizer model, or its vocab) and the
    special tokens it adds; a cache made with another tokenizer is rebuilt."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr(tokenizer("a b", add_special_tokens=True)["input_ids"]).encode())
    return h.hexdigest()[:16]


class TokenCounter:
    """Token counts with one tokenizer: ``count(text)`` for a whole input (special tokens included) and
    ``counts(pieces)`` for parts (no special tokens), batched."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        probe = "héllo, wörld"
        plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
        self.bytes_fast = list(plain) == list(probe.encode("utf-8"))  # the byte tokenizer: id == byte value
        self.special = len(tokenizer(probe, add_special_tokens=True)["input_ids"]) - len(plain)
        self.hash = tokenizer_hash(tokenizer)

    def count(self, text: str) -> int:
        if self.bytes_fast:
            return len(text.encode("utf-8")) + self.special
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def counts(self, pieces: list[str]) -> list[int]:
        if self.bytes_fast:
            return [len(p.encode("utf-8")) for p in pieces]
        if not pieces:
            return []
        return [len(ids) for ids in self.tokenizer(pieces, add_special_tokens=False)["input_ids"]]


class UnfitLength(ValueError):
    """The fixed part alone does not fit, or the units cannot reach ``min_frac * L``."""


def fit(
    build: Callable[[list[str]], str],
    draw: Callable[[], str],
    length: int,
    counter: TokenCounter,
    sep_tokens: int = 1,
    min_frac: float = 0.9,
    batch: int = 64,
    what: str = "input",
) -> tuple[str, int, int]:
    """Fill ``build(units)`` with units from ``draw()`` up to ``length`` tokens.

    ``build(units)`` -> the full input text with those units (its fixed part included); ``draw()`` -> the next
    unit (deterministic order). ``sep_tokens`` is the estimated cost of the separator between units.

    Returns ``(text, k, n_tokens)`` with ``min_frac * length <= n_tokens <= length``; raises :class:`UnfitLength`
    (a one-line ValueError naming the fix) otherwise.
    """
    base = counter.count(build([]))
    if base > length:
        raise UnfitLength(
            f"{what}: the question, demos and gold passages alone take {base} tokens, more than the length {length}; pass longer --lengths"
        )
    units: list[str] = []
    costs: list[int] = []
    est = base
    while est <= length:  # draw until the estimate passes the budget (one unit past it)
        new = [draw() for _ in range(batch)]
        for u, c in zip(new, counter.counts(new), strict=True):
            units.append(u)
            costs.append(c + sep_tokens)
            est += c + sep_tokens
            if est > length:
                break
    # Largest prefix whose estimate fits.
    cum, k = base, 0
    for c in costs:
        if cum + c > length:
            break
        cum += c
        k += 1
    avg = max(1.0, sum(costs) / max(1, len(costs)))
    lo = math.ceil(min_frac * length)
    tried: dict[int, int] = {}
    for _ in range(12):
        text = build(units[:k])
        n = counter.count(text)
        tried[k] = n
        if n > length:
            k = max(0, k - max(1, math.ceil((n - length) / avg)))
        elif n < lo and k < len(units) and (k + 1) not in tried:
            k = min(len(units), k + max(1, int((length - n) / avg)))
            if k in tried and tried[k] > length:
                k -= 1
        else:
            break
        if k in tried:
            n = tried[k]
            text = build(units[:k])
            break
    if not (lo <= n <= length):
        raise UnfitLength(
            f"{what}: could only fit {n} tokens into length {length} (needs {lo}..{length}); the units are too coarse "
            f"for this length: pass longer --lengths"
        )
    return text, k, n
