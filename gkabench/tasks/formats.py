"""Readers for the published file formats of HELMET's RAG data and RULER's QA inputs (``--data DIR``).

HELMET RAG (``kilt/{nq,triviaqa,popqa,hotpotqa}-*.jsonl``): one example per line::

    {"id": "...", "question": "who ...", "answers": ["..."],
     "ctxs": [{"title": "...", "text": "...", "has_answer": true?}, ...]}

  ``ctxs`` are the retrieved passages (gold among them). A passage is gold when it says ``has_answer`` (or
  ``gold``) true, or, without such a field, when it contains an answer (SQuAD-normalised substring). Demos come
  from a ``{flavour}*train*.jsonl`` file beside it when there is one (HELMET's k=3 demo files).

RULER QA inputs (the files RULER's ``qa.py`` reads):

- ``squad.json``: SQuAD v2 dev, ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"question", "id",
  "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``; unanswerable questions are skipped, the
  paragraph is the gold document, every distinct paragraph of the file is a possible distractor.
- ``hotpotqa.json``: HotpotQA dev (distractor setting), a list of ``{"_id", "question", "answer",
  "context": [[title, [sentence, ...]], ...]}``; a document is ``title + "\\n" + "".join(sentences)``, the
  question's own context documents are its gold documents, other questions' documents are distractors.

- ``PaulGrahamEssays.json`` (``{"text": "..."}``), RULER's NIAH haystack: when present, ``niah`` draws its
  haystack sentences from it instead of generated prose.

Each QA reader returns :class:`QAExample` rows over a shared document pool: ``(examples, docs)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .facts import contains_answer

RAG_FLAVOURS = ("nq", "triviaqa", "popqa", "hotpotqa")
LONGQA_FLAVOURS = ("squad", "hotpotqa")


@dataclass
class QAExample:
    """A question over a document pool: ``gold`` and ``own`` are indices into the pool (``own``: the example's
    other retrieved documents, preferred as distractors, as HELMET's retrieved contexts are)."""

    id: str
    question: str
    answers: list[str]
    gold: list[int]
    own: list[int] = field(default_factory=list)


@dataclass
class DocPool:
    """Documents as ``(title, text)``; titles may be empty (SQuAD paragraphs)."""

    docs: list[tuple[str, str]] = field(default_factory=list)
    index: dict[tuple[str, str], int] = field(default_factory=dict)
    demos: tuple | None = None  # HELMET: (examples, pool, path) of the train file the demos come from

    def add(self, title: str, text: str) -> int:
        key = (title, text)
        if key not in self.index:
            self.index[key] = len(self.docs)
            self.docs.append(key)
        return self.index[key]


def find_file(data_dir: str | Path, flavour: str, task: str) -> Path:
    """The file for ``task`` / ``flavour`` under ``data_dir`` (also its ``kilt/`` or ``json/`` subfolder):
    rag -> ``{flavour}*.jsonl`` (a ``*test*``/``*dev*`` file before a ``*train*`` one), longqa -> ``{flavour}.json``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {root}: no such directory; pass a folder with HELMET/RULER files or drop --data for generated facts"
        )
    dirs = [root, root / "kilt", root / "json", root / "data"]
    if task == "niah":
        return root
    if task == "rag":
        cands = sorted(p for d in dirs if d.is_dir() for p in d.glob(f"{flavour}*.jsonl"))
        cands.sort(key=lambda p: ("train" in p.name, p.name))
        if cands:
            return cands[0]
        raise FileNotFoundError(
            f"--data {root}: no HELMET file {flavour}*.jsonl (or kilt/{flavour}*.jsonl); add it or drop --data for generated facts"
        )
    for d in dirs:
        if (d / f"{flavour}.json").is_file():
            return d / f"{flavour}.json"
    raise FileNotFoundError(
        f"--data {root}: no RULER file {flavour}.json (or json/{flavour}.json); add it or drop --data for generated facts"
    )


def find_demo_file(data_dir: str | Path, flavour: str, test_file: Path) -> Path | None:
    """HELMET's demo file for ``flavour`` (``{flavour}*train*.jsonl``, e.g. ``kilt/nq-train-multikilt_1000_k3_dep6.jsonl``)
    when there is one besides the test file; None otherwise (demos then come from the test file's other rows)."""
    root = Path(data_dir)
    for d in (root, root / "kilt", root / "json", root / "data"):
        for p in sorted(d.glob(f"{flavour}*train*.jsonl")) if d.is_dir() else []:
            if p.resolve() != Path(test_file).resolve():
                return p
    return None


def read_helmet_rag(path: str | Path) -> tuple[list[QAExample], DocPool]:
    """HELMET RAG jsonl -> examples (gold and own passages) over one pool of all passages in the file."""
    pool, out = DocPool(), []
    with open(path) as f:
        for ln, line in enumerate(f):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                question, answers, ctxs = d["question"], d["answers"], d["ctxs"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(
                    f"{path}:{ln + 1}: not a HELMET RAG row ({exc}); expected question, answers, ctxs"
                ) from None
            answers = [answers] if isinstance(answers, str) else list(answers)
            gold, own = [], []
            for c in ctxs:
                idx = pool.add(str(c.get("title", "")), str(c["text"]))
                flag = c.get("has_answer", c.get("gold"))
                is_gold = bool(flag) if flag is not None else contains_answer(c["text"], answers)
                (gold if is_gold else own).append(idx)
            if gold:  # HELMET keeps only questions whose gold passage was retrieved
                out.append(QAExample(str(d.get("id", ln)), question, answers, gold, own))
    if not out:
        raise ValueError(f"{path}: no example has a gold passage (has_answer or an answer in its text)")
    return out, pool


def read_ruler_squad(path: str | Path) -> tuple[list[QAExample], DocPool]:
    """SQuAD (v1/v2) json as RULER reads it: answerable questions, their paragraph as the one gold document."""
    data = _load_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: not SQuAD json (no top-level 'data'); pass SQuAD dev-v2.0 as squad.json")
    pool, out = DocPool(), []
    for article in data["data"]:
        for para in article["paragraphs"]:
            idx = pool.add("", para["context"])
            for qa in para["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    continue
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                out.append(QAExample(str(qa.get("id", len(out))), qa["question"], answers, [idx]))
    return out, pool


def read_ruler_hotpotqa(path: str | Path) -> tuple[list[QAExample], DocPool]:
    """HotpotQA json as RULER reads it: every context document of a question is one of its gold documents."""
    data = _load_json(path)
    if not isinstance(data, list):
        # A user's data file, not a programming error: a one-line ValueError the CLI prints.
        raise ValueError(  # noqa: TRY004
            f"{path}: not HotpotQA json (expected a list of questions); pass hotpot_dev_distractor_v1.json as hotpotqa.json"
        )
    pool, out = DocPool(), []
    for i, d in enumerate(data):
        gold = [pool.add(title, "".join(sents)) for title, sents in d["context"]]
        out.append(QAExample(str(d.get("_id", i)), d["question"], [d["answer"]], gold))
    return out, pool


def read_qa(task: str, flavour: str, data_dir: str | Path) -> tuple[list[QAExample], DocPool, Path]:
    """The examples of ``task``/``flavour`` found under ``data_dir``: ``(examples, pool, path)``."""
    path = find_file(data_dir, flavour, task)
    if task == "rag":
        ex, pool = read_helmet_rag(path)
        demo = find_demo_file(data_dir, flavour, path)
        if demo is not None:
            pool.demos = (*read_helmet_rag(demo), demo)
    elif flavour == "squad":
        ex, pool = read_ruler_squad(path)
    else:
        ex, pool = read_ruler_hotpotqa(path)
    return ex, pool, path


def read_ruler_essays(data_dir: str | Path) -> tuple[list[str], Path] | None:
    """RULER's essay haystack as sentences (whitespace collapsed, split after . ! ?), or None when the folder
    has no ``PaulGrahamEssays.json`` (niah then uses generated prose)."""
    root = Path(data_dir)
    for d in (root, root / "json", root / "data"):
        path = d / "PaulGrahamEssays.json"
        if path.is_file():
            data = _load_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                raise ValueError(f'{path}: expected {{"text": "..."}} as RULER\'s PaulGrahamEssays.json')
            sents = [t for t in re.split(r"(?<=[.!?])\s+", " ".join(data["text"].split())) if t]
            if not sents:
                raise ValueError(f"{path}: no text")
            return sents, path
    return None


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
