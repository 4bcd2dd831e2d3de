"""``niah``: needle in a haystack, built as RULER builds its single- and multi-key needle tasks.

A needle is one sentence ``One of the special magic {numbers|uuids} for {key} is: {value}.`` inserted between
sentences of a haystack; the prompt asks for the values of one key and ends with an answer prefix::

    Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you
    about the numbers afterwards.
    <haystack sentences ... needle ... haystack sentences>
    What are all the special magic numbers for amber-kettle-zo mentioned in the provided text? The special magic
    numbers for amber-kettle-zo mentioned in the provided text are

Flavours:

- ``niah_single``: one needle, a 7-digit number (RULER niah_single).
- ``niah_multikey``: four needles with different keys and uuid-shaped values; one key is asked, the other three
  are distractor needles at random positions (RULER niah_multikey with uuid values).

The haystack is generated prose (fictional facts and filler sentences, never containing a needle value), so it
is deterministic and needs no download; with ``--data DIR`` holding RULER's ``PaulGrahamEssays.json`` the
haystack is the essays' sentences instead. The asked needle sits at the row's
depth (fraction of haystack sentences before it). Score: fraction of gold values found in the answer.
"""

from __future__ import annotations

import random

from .facts import FactWorld
from .fitting import TokenCounter, fit

FLAVOURS = ("niah_single", "niah_multikey")
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
PROMPT_HEAD = "Some special magic {kind} are hidden within the following text. Make sure to memorize it. I will quiz you about the {kind} afterwards.\n"
PROMPT_TAIL = "\nWhat are all the special magic {kind} for {key} mentioned in the provided text? The special magic {kind} for {key} mentioned in the provided text are"
MULTIKEY_NEEDLES = 4


def build_row(
    flavour: str,
    length: int,
    index: int,
    depth: float,
    seed: int,
    counter: TokenCounter,
    data=None,
    gold_in_context: bool = True,
) -> dict:
    """One ``niah`` input fitted to ``length`` tokens; ``answers`` are the asked key's values (all needed)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown niah flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    world = FactWorld(f"niah|{flavour}|{seed}|{index}")
    multi = flavour == "niah_multikey"
    kind = "uuids" if multi else "numbers"
    keys = [world.niah_key() for _ in range(MULTIKEY_NEEDLES if multi else 1)]
    values = [world.uuid() if multi else world.number(7) for _ in keys]
    needles = [NEEDLE.format(kind=kind, key=k, value=v) for k, v in zip(keys, values, strict=True)]
    # Distractor needles get fixed relative positions, drawn once, so the row is the same at every length.
    other_depths = [world.rng.random() for _ in needles[1:]]
    head = PROMPT_HEAD.format(kind=kind)
    tail = PROMPT_TAIL.format(kind=kind, key=keys[0])

    if data is None:
        source = "facts"

        def next_sentence() -> str:
            return world.haystack_sentence()
    else:  # RULER's essays: sentences in order from a seeded start, wrapping around as RULER repeats the essay
        sentences, path = data
        source = f"ruler:{path.name}"
        pos = [random.Random(f"niah-essay|{seed}|{index}").randrange(len(sentences))]

        def next_sentence() -> str:
            s = sentences[pos[0] % len(sentences)]
            pos[0] += 1
            return s

    def draw() -> str:
        while True:
            s = next_sentence()
            if not any(v in s for v in values):
                return s

    def build(units: list[str]) -> str:
        sents = list(units)
        placed = [(other_depths[i], needles[i + 1]) for i in range(len(needles) - 1)]
        if gold_in_context:
            placed.append((depth, needles[0]))
        # Insert from the deepest so earlier positions stay valid; positions are fractions of the haystack.
        n0 = len(sents)
        for d, needle in sorted(placed, key=lambda t: -t[0]):
            sents.insert(round(d * n0), needle)
        return head + " ".join(sents) + tail

    prompt, k, n = fit(build, draw, length, counter, sep_tokens=1, what=f"niah/{flavour} at {length}")
    return {
        "task": "niah", "flavour": flavour, "length": length, "index": index, "depth": depth, "seed": seed,
        "prompt": prompt, "question": tail.strip(), "answers": [values[0]], "gold_passages": [needles[0]],
        "context_start": 0, "input_tokens": n, "n_docs": k, "gold_in_context": gold_in_context,
        "answer_prefix": None, "keys": keys, "source": source, "relation": "niah.uuid" if multi else "niah.number",
    }  # fmt: skip
