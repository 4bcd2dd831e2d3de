"""The long-context tasks in one place: names, row building with an on-disk cache, and reference readers.

    spec = parse_tasks("rag,longqa.squad,niah")      # [("rag", "nq"), ..., ("longqa", "squad"), ("niah", ...)]
    rows = get_rows("rag", "nq", 4096, n=50, seed=0, tokenizer=tok, cache_dir="~/.cache/gkabench/tasks")

A row is a JSON-able dict (see :func:`gkabench.tasks.rag.build_row`): ``task, flavour, length, index, depth,
prompt, answers, gold_passages, input_tokens, ...``. Row ``i`` has depth ``depths[i % len(depths)]`` and is the
same question at every length (only the filler grows), so scores across lengths are paired.

Cache: ``<cache_dir>/<task>-<flavour>-<length>-s<seed>-n<n>-<key>.jsonl`` plus ``.manifest.json`` beside it
stating the generator version, tokenizer hash, task, flavour, length, seed, n, depths and data fingerprint. A
manifest that differs from what is asked (new generator version, other tokenizer, changed data file) makes the
rows be rebuilt; rows are written atomically.

Reference readers (validity checks): :func:`oracle_answer` answers from the gold passage when, and only when,
all gold passages are in the test context; :func:`closed_book_answer` sees only the question.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import longqa, niah, rag
from .facts import GENERATOR_VERSION, guess_answer
from .fitting import TokenCounter

TASKS = {"rag": rag, "longqa": longqa, "niah": niah}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROW_FORMAT = 1  # bump with any change to the row fields


def default_cache_dir() -> Path:
    return Path(os.environ.get("GKABENCH_CACHE", Path.home() / ".cache" / "gkabench")) / "tasks"


def parse_tasks(text: str) -> list[tuple[str, str]]:
    """``"rag,longqa.squad,niah.niah_single"`` -> ``[(task, flavour), ...]``; a bare task means all its flavours."""
    out: list[tuple[str, str]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        task, _, flavour = item.partition(".")
        if task not in TASKS:
            raise ValueError(
                f"--task: unknown task {task!r}; choose from {', '.join(TASKS)} (or lm-eval:<task>), e.g. --task rag,longqa.squad"
            )
        flavours = TASKS[task].FLAVOURS
        if flavour and flavour not in flavours:
            raise ValueError(f"--task: {task} has no flavour {flavour!r}; choose from {', '.join(flavours)}")
        for f in [flavour] if flavour else flavours:
            if (task, f) not in out:
                out.append((task, f))
    if not out:
        raise ValueError("--task is empty; pass e.g. --task rag,longqa,niah")
    return out


def load_data(task: str, flavour: str, data_dir: str | None):
    """Real data for (task, flavour) under ``data_dir`` (None -> generated facts). niah: RULER's essay haystack
    when the folder has one, else None (generated prose)."""
    if data_dir is None:
        return None
    from .formats import find_file, read_qa, read_ruler_essays

    if task == "niah":
        find_file(data_dir, "", "niah")  # the folder must exist
        return read_ruler_essays(data_dir)
    return read_qa(task, flavour, data_dir)


def build_row(
    task: str,
    flavour: str,
    length: int,
    index: int,
    seed: int,
    counter: TokenCounter,
    depths=DEFAULT_DEPTHS,
    data=None,
    gold_in_context: bool = True,
) -> dict:
    depth = float(depths[index % len(depths)])
    return TASKS[task].build_row(
        flavour, length, index, depth, seed, counter, data=data, gold_in_context=gold_in_context
    )


def _fingerprint(data) -> str | None:
    if data is None:
        return None
    paths = [Path(data[-1])]
    demos = getattr(data[1], "demos", None) if len(data) == 3 else None
    if demos is not None:
        paths.append(Path(demos[-1]))
    return ";".join(f"{p.resolve()}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in paths)


def manifest_for(task, flavour, length, n, seed, counter: TokenCounter, depths, data) -> dict:
    return {
        "generator_version": GENERATOR_VERSION, "row_format": ROW_FORMAT, "tokenizer_hash": counter.hash,
        "task": task, "flavour": flavour, "length": length, "seed": seed, "n": n, "depths": list(map(float, depths)),
        "data": _fingerprint(data),
    }  # fmt: skip


def get_rows(
    task: str, flavour: str, length: int, n: int, seed: int, tokenizer=None, counter: TokenCounter | None = None,
    cache_dir: str | Path | None = None, depths=DEFAULT_DEPTHS, data_dir: str | None = None, data=None, progress=None,
) -> list[dict]:  # fmt: skip
    """``n`` rows of (task, flavour) at ``length``, from the cache when its manifest matches, else built (and
    cached). ``cache_dir=False`` disables the cache. ``progress(i)`` is called after each built row."""
    from ..io import read_jsonl, write_text_atomic

    counter = counter or TokenCounter(tokenizer)
    if data is None:
        data = load_data(task, flavour, data_dir)
    want = manifest_for(task, flavour, length, n, seed, counter, depths, data)
    path = None
    if cache_dir is not False:
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        key = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:10]
        path = root / f"{task}-{flavour}-{length}-s{seed}-n{n}-{key}.jsonl"
        man = path.with_suffix(".manifest.json")
        if path.exists() and man.exists():
            try:
                have = json.loads(man.read_text())
            except json.JSONDecodeError:
                have = None
            if have == want:
                rows = read_jsonl(path)
                if len(rows) == n:
                    return rows
    rows = []
    for i in range(n):
        rows.append(build_row(task, flavour, length, i, seed, counter, depths=depths, data=data))
        if progress:
            progress(i)
    if path is not None:
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        write_text_atomic(path.with_suffix(".manifest.json"), json.dumps(want, indent=1))
    return rows


# ------------------------------------------------------------------------------------------ reference readers


def context_of(row: dict) -> str:
    """The part of the prompt a reader may answer from: after the demos (which hold other questions' answers)."""
    return row["prompt"][row.get("context_start", 0) :]


def oracle_answer(row: dict) -> str:
    """Answer from the gold passage(s) by construction: the gold answer when every gold passage is in the test
    context, else the empty string. Scores 1.0 on valid rows and 0 when the gold is moved out."""
    ctx = context_of(row)
    if all(g in ctx for g in row["gold_passages"]):
        return " ".join(row["answers"])
    return ""


def closed_book_answer(row: dict) -> str:
    """A reader that sees only the question: a plausible value of the asked kind, drawn from the question."""
    rel = row.get("relation") or "person.birthplace"
    if rel.startswith("niah."):
        from .facts import FactWorld

        w = FactWorld(f"guess-{row['question']}")
        return w.uuid() if rel == "niah.uuid" else w.number(7)
    return guess_answer(rel, row["question"])


# ------------------------------------------------------------------------------------------- training stream


def training_text(
    index: int, length: int, seed: int, counter: TokenCounter, specs: list[tuple[str, str]], answer_room: int = 64,
    questions: int = 1,
) -> str:
    """Document ``index`` of a training stream: a task input of about ``length - answer_room`` tokens with its
    answer written after the prompt (``... Answer: Vorlanth``), task and flavour cycling over ``specs``, the
    gold at a random depth. Seeds are strings (``train<seed>``), never the integers evaluation rows use, so no
    training document is an evaluation row. ``questions > 1``: rag documents ask that many questions over one
    context (:func:`gkabench.tasks.rag.multi_question_text`); the other tasks keep one."""
    import random

    task, flavour = specs[index % len(specs)]
    if questions > 1 and task == "rag":
        from .rag import multi_question_text

        # room for the tokenizer's BOS and the EOS the training stream appends
        return multi_question_text(flavour, length - 8, index, f"train{seed}", counter, questions)
    depth = random.Random(f"train-depth|{seed}|{index}").random()
    row = TASKS[task].build_row(flavour, length - answer_room, index, depth, f"train{seed}", counter)
    sep = "" if row["prompt"].endswith("\n") else " "
    return row["prompt"] + sep + ", ".join(row["answers"]) + ("." if task == "niah" else "") + "\n"


# ------------------------------------------------------------------------------------------- lm-eval adapter
#
# Our tasks as lm-eval tasks, the way lm-eval's own RULER tasks are built: a YAML with
#     custom_dataset: !function utils.dataset     (utils.py beside the YAML: from gkabench.tasks.longctx import ...)
#     process_results: !function utils.process_results
#     metadata: {gkabench_task: rag.nq, max_seq_lengths: [4096, 8192]}
# lm-eval calls ``custom_dataset(**metadata)``, and its metadata also carries the model arguments (``pretrained``,
# ``tokenizer``), so rows are fitted with the evaluated model's tokenizer. Metrics are named by length ("4096")
# as RULER's are; a doc scores -1 on the other lengths' metrics and :func:`lm_eval_aggregate` skips those.


def lm_eval_dataset(**kwargs) -> dict:
    """``{"test": datasets.Dataset}`` of rows for lm-eval. Keyword arguments (lm-eval metadata):
    ``gkabench_task`` (``rag.nq``, ``niah`` ...), ``max_seq_lengths`` (ints or ``"4k"``), ``n`` (per task flavour
    and length, default 50), ``seed``, ``data`` (``--data`` folder), ``cache_dir``, ``tokenizer`` / ``pretrained``
    (a local tokenizer file or model folder; default the byte tokenizer).

    Doc fields: ``input`` (the prompt), ``outputs`` (gold answers), ``task``, ``flavour``, ``max_length``,
    ``lengths`` (all lengths, for the metric names), ``depth``, ``answer_prefix``."""
    import datasets

    from ..tokenizers import load_tokenizer
    from .fitting import parse_length

    spec = kwargs.get("gkabench_task")
    if not spec:
        raise ValueError("lm-eval task metadata lacks gkabench_task; set e.g. metadata: {gkabench_task: rag.nq}")
    lengths = [parse_length(str(x)) for x in kwargs.get("max_seq_lengths") or [4096]]
    tok_path = kwargs.get("tokenizer") or kwargs.get("pretrained")
    tokenizer = load_tokenizer(tok_path if tok_path and Path(str(tok_path)).exists() else None)
    counter = TokenCounter(tokenizer)
    docs = []
    for task, flavour in parse_tasks(str(spec)):
        for length in lengths:
            for r in get_rows(task, flavour, length, int(kwargs.get("n", 50)), int(kwargs.get("seed", 0)), counter=counter,
                              cache_dir=kwargs.get("cache_dir"), data_dir=kwargs.get("data")):  # fmt: skip
                docs.append({"input": r["prompt"], "outputs": list(r["answers"]), "task": task, "flavour": flavour,
                             "max_length": length, "lengths": lengths, "depth": r["depth"], "answer_prefix": r["answer_prefix"] or ""})  # fmt: skip
    return {"test": datasets.Dataset.from_list(docs)}


def lm_eval_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Score one generation: SubEM (rag, longqa) or needle recall (niah) under the doc's length, -1 elsewhere."""
    from .scoring import clean_prediction, score_row

    pred = clean_prediction(results[0], doc.get("answer_prefix") or None)
    out = {str(n): -1.0 for n in doc["lengths"]}
    out[str(doc["max_length"])] = score_row(doc["task"], pred, list(doc["outputs"]))
    return out


def lm_eval_aggregate(scores: list[float]) -> float:
    """Mean over the docs of one length (the -1 placeholders of other lengths left out); -1 when none."""
    kept = [s for s in scores if s >= 0]
    return sum(kept) / len(kept) if kept else -1.0
