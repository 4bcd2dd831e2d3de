"""``rag``: retrieval-augmented QA over many passages, built as HELMET builds its RAG inputs.

One input (``Answer:`` format, 2 demos of 3 passages each, then the test passages and question)::

    Use the documents below to write a short, concise answer to the question. Give it in this format:
    Answer: [answer]

    Document (Title: T1): ...        <- demo 1: 3 passages, its question and answer
    ...
    Question: ...
    Answer: ...

    Document (Title: T2): ...        <- demo 2

    Document (Title: ...): ...       <- the test passages: distractors with the gold passage(s) at depth d
    ...

    Question: ...
    Answer:

Flavours: ``nq``, ``triviaqa``, ``popqa`` (one gold passage, question in that dataset's style) and ``hotpotqa``
(two gold passages joined by a bridge entity, placed together at the depth). The number of passages is whatever
fills the target length (HELMET varies k with the length the same way).

Sources: generated fictional facts (default; distractors checked answer-free) or HELMET's jsonl via ``--data``
(the example's own retrieved passages first, then other examples' passages, answer-free ones only).
"""

from __future__ import annotations

import random

from .facts import FactWorld, Passage, contains_answer
from .fitting import TokenCounter, fit
from .formats import RAG_FLAVOURS

FLAVOURS = RAG_FLAVOURS
INSTRUCTION = "Use the documents below to write a short, concise answer to the question. Give it in this format:\nAnswer: [answer]"
ANSWER_PREFIX = "Answer:"
DEMO_DOCS = 3  # HELMET's demos come from k=3 retrieval files
SHOTS = 2


def format_passage(title: str, text: str) -> str:
    return f"Document (Title: {title}): {text}" if title else f"Document: {text}"


def format_demo(passages: list[str], question: str, answer: str) -> str:
    return "\n\n".join(passages) + f"\n\nQuestion: {question}\nAnswer: {answer}"


def assemble(demos: list[str], passages: list[str], question: str) -> tuple[str, int]:
    """The full prompt and the character offset where the test passages begin (after the demos)."""
    head = INSTRUCTION + "\n\n" + "".join(d + "\n\n" for d in demos)
    return head + "\n\n".join(passages) + f"\n\nQuestion: {question}\n{ANSWER_PREFIX}", len(head)


def insert_at_depth(units: list[str], gold: list[str], depth: float | None) -> list[str]:
    """``gold`` inserted together at ``round(depth * len(units))`` (depth 0 = first, 1 = last); None: left out."""
    if depth is None:
        return list(units)
    pos = round(depth * len(units))
    return units[:pos] + list(gold) + units[pos:]


def _generated_parts(flavour: str, index: int, seed: int):
    world = FactWorld(f"rag|{flavour}|{seed}|{index}")  # no length in the seed: same question at every length
    q = world.two_hop() if flavour == "hotpotqa" else world.single_hop(flavour)
    demos = []
    for j in range(SHOTS):
        dw = FactWorld(f"rag-demo|{flavour}|{seed}|{index}|{j}")
        for _ in range(20):
            dq = dw.two_hop() if flavour == "hotpotqa" else dw.single_hop(flavour)
            if not contains_answer(dq.text, q.answers) and not contains_answer(dq.answers[0], q.answers):
                break
        docs = list(dq.gold)
        while len(docs) < DEMO_DOCS:
            docs.append(dw.entity_passage(avoid=q.answers + dq.answers))
        dw.rng.shuffle(docs)
        demos.append(format_demo([format_passage(p.title, p.text) for p in docs], dq.text, dq.answers[0]))
    gold = [format_passage(p.title, p.text) for p in q.gold]

    def draw() -> str:
        p: Passage = world.distractor(q)
        return format_passage(p.title, p.text)

    return q.text, q.answers, gold, demos, draw, {"relation": q.relation, "hops": q.hops, "source": "facts"}


def _real_parts(data, index: int, seed: int):
    examples, pool, path = data
    ex = examples[index % len(examples)]
    docs = pool.docs

    def fmt(i):
        return format_passage(*docs[i])

    gold = [fmt(i) for i in ex.gold]
    demos = []
    if pool.demos is not None:  # HELMET: demos drawn from the train file, per question, distinct questions
        d_examples, d_pool, _ = pool.demos
        rng = random.Random(f"rag-demo|{seed}|{ex.question}")
        picked, seen = [], set()
        for d in rng.sample(d_examples, len(d_examples)):
            if d.question not in seen and d.question != ex.question and not contains_answer(d.answers[0], ex.answers):
                picked.append(d)
                seen.add(d.question)
            if len(picked) == SHOTS:
                break
        d_docs = d_pool.docs
    else:  # no train file: the next rows of the test file
        picked = [d for j in range(1, SHOTS + 1) if (d := examples[(index + j) % len(examples)]) is not ex]
        d_docs = docs
    for d in picked:
        own = [i for i in d.own if not contains_answer(d_docs[i][0] + " " + d_docs[i][1], ex.answers)]
        ds = [format_passage(*d_docs[i]) for i in [d.gold[0], *own][:DEMO_DOCS]]
        demos.append(format_demo(ds, d.question, d.answers[0]))
    rng = random.Random(f"rag-real|{seed}|{index}")
    order = list(ex.own) + [i for i in rng.sample(range(len(docs)), len(docs)) if i not in set(ex.own) | set(ex.gold)]
    it = iter(order)

    def draw() -> str:
        for i in it:
            if not contains_answer(docs[i][0] + " " + docs[i][1], ex.answers):
                return fmt(i)
        return None  # exhausted: fit() reports the length as unfit

    return ex.question, ex.answers, gold, demos, draw, {"source": f"helmet:{path.name}", "example_id": ex.id}


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
    """One ``rag`` input of ``flavour`` fitted to ``length`` tokens, gold at ``depth``; ``data``: the result of
    :func:`gkabench.tasks.formats.read_qa` for real data, None for generated facts.

    Returns a JSON-able row: ``prompt``, ``answers``, ``gold_passages``, ``context_start``, ``input_tokens``..."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown rag flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    question, answers, gold, demos, draw, meta = (
        _generated_parts(flavour, index, seed) if data is None else _real_parts(data, index, seed)
    )
    where = depth if gold_in_context else None

    def build(units):
        return assemble(demos, insert_at_depth(units, gold, where), question)[0]

    prompt, k, n = fit(build, draw, length, counter, sep_tokens=1, what=f"rag/{flavour} at {length}")
    return {
        "task": "rag", "flavour": flavour, "length": length, "index": index, "depth": depth, "seed": seed,
        "prompt": prompt, "question": question, "answers": answers, "gold_passages": gold,
        "context_start": assemble(demos, [], question)[1], "input_tokens": n, "n_docs": k + (len(gold) if gold_in_context else 0),
        "gold_in_context": gold_in_context, "answer_prefix": ANSWER_PREFIX, **meta,
    }  # fmt: skip


def multi_question_text(flavour: str, length: int, index: int, seed: str, counter: TokenCounter, questions: int) -> str:
    """Training only: passages fitted to ``length`` tokens that hold the gold passages of ``questions`` questions
    (each at its own random depth among answer-free distractors), then every question with its answer, in the
    ``Question: ...`` / ``Answer: ...`` lines of the evaluation format.

    Why: a training document of the evaluation format supervises one answer (plus two demo answers) per
    ``length`` tokens; small models trained for minutes on the H200 learned the answer format but no retrieval
    (session 4: scores ~0 at every length). Many questions over one context give many answers to read per
    document. Every answer appears only in its own gold passage(s): no distractor, question or other gold passage
    contains it. Seeds (``rag-multi|...``) are disjoint from every evaluation row's."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown rag flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    world = FactWorld(f"rag-multi|{flavour}|{seed}|{index}")
    qs = []
    for _ in range(4 * questions):
        if len(qs) == questions:
            break
        q = world.two_hop() if flavour == "hotpotqa" else world.single_hop(flavour)
        own = q.text + " " + " ".join(p.title + " " + p.text for p in q.gold)
        if any(contains_answer(own, o.answers) or contains_answer(o.text + " " + " ".join(p.title + " " + p.text for p in o.gold), q.answers) for o in qs):
            continue  # an answer would be readable from another question's passages
        qs.append(q)
    answers = [a for q in qs for a in q.answers]
    golds = [[format_passage(p.title, p.text) for p in q.gold] for q in qs]
    rng = random.Random(f"rag-multi-layout|{seed}|{index}")
    depths = [rng.random() for _ in qs]
    qa = "\n\n".join(f"Question: {q.text}\n{ANSWER_PREFIX} {q.answers[0]}" for q in qs)

    def build(units: list[str]) -> str:
        out = list(units)
        # from the deepest position down, so earlier insertions do not shift the later ones' places
        for gold, depth in sorted(zip(golds, depths), key=lambda gd: -gd[1]):
            pos = round(depth * len(units))
            out[pos:pos] = gold
        return INSTRUCTION + "\n\n" + "\n\n".join(out) + "\n\n" + qa + "\n"

    def draw() -> str | None:
        for _ in range(50):
            p = world.distractor(qs[rng.randrange(len(qs))])
            if not contains_answer(p.title + " " + p.text, answers):
                return format_passage(p.title, p.text)
        return None

    return fit(build, draw, length, counter, sep_tokens=1, what=f"rag/{flavour} x{questions} questions at {length}")[0]
