"""``longqa``: question answering over many numbered documents, built as RULER builds its QA task.

One input (the instruction stated before and after the documents, answer prefix at the end)::

    Answer the question from the documents given. Give only the answer, no other words.

    The documents are:

    Document 1:
    ...

    Document 2:
    ...

    Answer the question from the documents given. Give only the answer, no other words.

    Question: ... Answer:

Flavours: ``squad`` (one gold paragraph; SQuAD-like single-fact questions) and ``hotpotqa`` (two gold documents
joined by a bridge; ``title`` + newline + text, as RULER formats HotpotQA documents). Documents are numbered in
order after shuffling the distractors; RULER shuffles gold and distractors together, here the gold documents are
put at a controlled depth (recorded per row) so scores can be read by position as well.

Sources: generated fictional facts (default) or RULER's ``squad.json`` / ``hotpotqa.json`` via ``--data``.
"""

from __future__ import annotations

import random

from .facts import FactWorld, contains_answer
from .fitting import TokenCounter, fit
from .formats import LONGQA_FLAVOURS
from .rag import insert_at_depth

FLAVOURS = LONGQA_FLAVOURS
INSTRUCTION = "Answer the question from the documents given. Give only the answer, no other words."
ANSWER_PREFIX = "Answer:"


def doc_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


def assemble(docs: list[str], question: str) -> str:
    body = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
    return f"{INSTRUCTION}\n\nThe documents are:\n\n{body}\n\n{INSTRUCTION}\n\nQuestion: {question} {ANSWER_PREFIX}"


def _generated_parts(flavour: str, index: int, seed: int):
    world = FactWorld(f"longqa|{flavour}|{seed}|{index}")
    if flavour == "squad":
        q = world.single_hop("squad")
        gold = [p.text for p in q.gold]  # SQuAD paragraphs come without titles

        def draw():
            return world.distractor(q).text
    else:
        q = world.two_hop()
        gold = [doc_text(p.title, p.text) for p in q.gold]

        def draw():
            p = world.distractor(q)
            return doc_text(p.title, p.text)

    return q.text, q.answers, gold, draw, {"relation": q.relation, "hops": q.hops, "source": "facts"}


def _real_parts(data, index: int, seed: int):
    examples, pool, path = data
    ex = examples[index % len(examples)]
    docs = pool.docs
    gold = [doc_text(*docs[i]) for i in ex.gold]
    rng = random.Random(f"longqa-real|{seed}|{index}")
    skip = set(ex.gold)
    it = (i for i in rng.sample(range(len(docs)), len(docs)) if i not in skip)

    def draw():
        for i in it:
            if not contains_answer(docs[i][0] + " " + docs[i][1], ex.answers):
                return doc_text(*docs[i])
        return None  # exhausted: fit() reports the length as unfit

    return ex.question, ex.answers, gold, draw, {"source": f"ruler:{path.name}", "example_id": ex.id}


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
    """One ``longqa`` input fitted to ``length`` tokens (see :func:`gkabench.tasks.rag.build_row` for the row)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown longqa flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    question, answers, gold, draw, meta = (
        _generated_parts(flavour, index, seed) if data is None else _real_parts(data, index, seed)
    )
    where = depth if gold_in_context else None

    def build(units):
        return assemble(insert_at_depth(units, gold, where), question)

    # Each document costs its header "Document i:\n" and the blank line as well.
    prompt, k, n = fit(
        build,
        draw,
        length,
        counter,
        sep_tokens=counter.count("\n\nDocument 10:\n") - counter.special,
        what=f"longqa/{flavour} at {length}",
    )
    return {
        "task": "longqa", "flavour": flavour, "length": length, "index": index, "depth": depth, "seed": seed,
        "prompt": prompt, "question": question, "answers": answers, "gold_passages": gold, "context_start": 0,
        "input_tokens": n, "n_docs": k + (len(gold) if gold_in_context else 0), "gold_in_context": gold_in_context,
        "answer_prefix": ANSWER_PREFIX, **meta,
    }  # fmt: skip
