"""Scoring of long-context answers, as HELMET and RULER score them.

- ``rag`` / ``longqa``: substring exact match (SubEM): 1.0 when any gold answer, SQuAD-normalised, occurs in the
  normalised prediction (HELMET's ``substring_exact_match``; RULER's QA ``string_match_part`` is the same idea
  with lower-casing only).
- ``niah``: fraction of the gold needle values that occur in the prediction (RULER's ``string_match_all``).

SQuAD normalisation: lower-case, drop punctuation, drop the articles a / an / the, collapse whitespace.
"""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: ``"The  Quenvar-Mills!"`` -> ``"quenvarmills"`` (punctuation removed, not spaced)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def substring_exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when a normalised answer is a substring of the normalised prediction, else 0.0 (empty answers never
    match, so a degenerate gold cannot give free points)."""
    pred = normalize_answer(prediction)
    return float(any((a := normalize_answer(x)) and a in pred for x in answers))


def recall_all(prediction: str, values: list[str]) -> float:
    """Fraction of ``values`` found (case-insensitive substring) in ``prediction``: RULER's string_match_all."""
    if not values:
        return 0.0
    pred = prediction.lower()
    return sum(v.lower() in pred for v in values) / len(values)


def clean_prediction(text: str, prefix: str | None = None) -> str:
    """The short answer in a generation: text up to the first newline; when the model repeats an answer
    ``prefix`` (``Answer:``) at the start, what follows it."""
    text = text.strip()
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix) :]
    return text.split("\n", 1)[0].strip()


def score_row(task: str, prediction: str, answers: list[str]) -> float:
    """The score of one prediction for ``task`` (rag, longqa: SubEM; niah: recall of all values)."""
    if task == "niah":
        return recall_all(prediction, answers)
    if task in ("rag", "longqa"):
        return substring_exact_match(prediction, answers)
    raise ValueError(f"no scorer for task {task!r}; tasks are rag, longqa, niah")
