"""``gkabench report``: comparison tables from everything under ``results/``.

Modules: :mod:`.read` (the result files), :mod:`.tables` (scores, averages, differences; speed and MQAR summaries),
:mod:`.render` (markdown, CSV, PNG); :func:`make_report` here ties them together.

Reads (each folder optional, unknown fields ignored, unreadable lines skipped):

- ``results/eval/**/*.jsonl`` (subfolders included): one row per score. Fields read: ``model`` (default: the file name), ``mixer``,
  ``task`` (``arc_easy``, ``rag``, ``longqa``, ``niah``; ``rag/nq`` or ``rag:nq`` also read as task/flavour),
  ``flavour`` (``nq``, ``triviaqa``, ``popqa``, ``hotpotqa``, ``squad``, ``niah_single``...), ``length`` (tokens,
  or ``8k``; also ``seq_len``), ``metric`` and ``value`` (or ``score``), ``filter``; ``mixers`` (a list) when
  there is no ``mixer``. Values are fractions
  (lm-eval's and SubEM's 0..1; a value above 1 is taken as a percentage already) and are shown as percentages.
  Rows with an ``index`` are per-example scores (``gkabench eval``'s rows) and are averaged (the last row per
  index, seed, source and depth; only rows with the same ``model_fingerprint``, ``generator_version`` and
  ``tokenizer_hash`` as the model's last row, so a retrained checkpoint's old rows drop out); otherwise the last row
  per (model, task, flavour, length, metric) wins, so a rerun replaces an older score.
- ``results/speed/*.jsonl`` (``gkabench speed``): tokens/s per mixer, length and mode; the last ``ok`` row per cell.
- ``results/mqar/*.jsonl`` (``gkabench mqar``): the best accuracy over learning rates per cell, within one training
  setting (vocab, steps, batch, layers, head_dim: a rerun with other settings gets its own table); with
  several seeds, the lr chosen on the first seed and the mean over the seeds at it, as in the sweep's own table.

Writes to ``results/report/`` (every file atomically): ``report.md`` (all tables), ``eval.csv`` (long format:
one row per model x task x length, with the baseline's value and the absolute / relative differences; category
averages as task ``avg``), ``eval_cost.csv`` (seconds and peak memory per model and length, from ``gkabench
eval``'s rows), ``speed.csv``, ``mqar.csv``, and ``<task>.png`` per long-context task (score vs
length, one line per model, one panel per flavour plus the average).

Category averages as the GKA paper computes them: RAG = mean of NQ, TriviaQA, PopQA, HotpotQA (HELMET SubEM) per
length; LongQA = mean of SQuAD and HotpotQA (RULER) per length; short context = mean of the 10 lm-eval tasks with
acc_norm for ARC-C, ARC-E, HellaSwag, PIQA, SciQ, acc for BoolQ, COPA, Winogrande and contains for FDA, SWDE. An
average over fewer parts than the paper's is marked ``*`` (markdown) and ``complete = false`` (CSV).

Differences against ``--baseline`` (a model name, or a mixer name that one model has): absolute in points,
relative = (model - baseline) / baseline, so a "+10% relative" claim reads directly off the tables. Without
``--baseline``: the model whose mixer is ``gated_deltanet``; of several, the one without ``@<folder>``, else none
(with a note). Models whose rows come from other data than the baseline's (``name@<folder>``: ``gkabench eval
--data``, real data; a plain name: generated facts) get no differences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_text_atomic
from .read import (
    DEFAULT_BASELINE, LONG_TASKS, MQAR_SETTINGS, PAPER_SHORT_TASKS, Score, fmt_len, parse_length, read_eval, read_eval_cost,
    read_mqar, read_speed,
)  # fmt: skip
from .render import _summary, eval_csv_rows, markdown, plot_long_task, write_csv_rows
from .tables import Cell, Table, apply_baseline, build_tables, data_source, mqar_tables, relative_diff, resolve_baseline, speed_tables

# the package's public names (``from gkabench.report import ...``): reading, tables, writing, and the entry point
__all__ = [
    "PAPER_SHORT_TASKS", "LONG_TASKS", "Score", "Cell", "Table", "ReportResult", "make_report", "read_eval", "read_eval_cost",
    "read_speed", "read_mqar", "parse_length", "fmt_len", "relative_diff", "build_tables", "resolve_baseline",
    "apply_baseline", "speed_tables", "mqar_tables", "markdown",
]  # fmt: skip


@dataclass
class ReportResult:
    paths: list[Path]
    baseline: str | None
    tables: list[Table]
    summary: tuple
    notes: list[str] = field(default_factory=list)  # about the baseline (which one, who is not compared)


def make_report(
    results: str | os.PathLike = "results", out: str | os.PathLike | None = None, baseline: str | None = None
) -> ReportResult:
    """Read ``results/{eval,speed,mqar}`` and write the report files into ``out`` (default ``results/report``).
    ``baseline`` None: ``gated_deltanet`` when present, no differences otherwise; a baseline given that is not
    there raises a one-line ValueError."""
    results = Path(results)
    out = Path(out) if out is not None else results / "report"
    if not results.is_dir():
        raise ValueError(
            f"results folder {results} does not exist; pass --results DIR (the folder holding eval/, speed/, mqar/)"
        )
    scores = read_eval(results / "eval")
    speed = read_speed(results / "speed")
    mqar = read_mqar(results / "mqar")
    cost = read_eval_cost(results / "eval")
    mixers = {}
    for s in scores:
        if s.mixer and not mixers.get(s.model):
            mixers[s.model] = s.mixer
        mixers.setdefault(s.model, None)
    notes: list[str] = []
    base = resolve_baseline(scores, baseline or DEFAULT_BASELINE, strict=baseline is not None, notes=notes)
    if scores and base is None and not notes:
        notes.append(f"No baseline: `{DEFAULT_BASELINE}` is not among the models; pass --baseline NAME for differences.")
    if base is not None:
        other = [m for m in dict.fromkeys(s.model for s in scores) if data_source(m) != data_source(base)]
        if other:
            notes.append(
                f"No differences for {', '.join(other)}: their rows come from other data than {base}'s "
                "(`name@<folder>`: real data; plain name: generated)."
            )
    note = "\n".join(notes) or None
    tables = build_tables(scores)
    apply_baseline(tables, base)
    paths = []
    md = out / "report.md"
    write_text_atomic(md, markdown(tables, base, mixers, speed, mqar, results, note, cost) + "\n")
    paths.append(md)
    if tables:
        cols = [
            "model",
            "mixer",
            "category",
            "task",
            "flavour",
            "length",
            "metric",
            "value",
            "parts",
            "complete",
            "baseline_value",
            "abs_diff",
            "rel_diff_pct",
        ]
        paths.append(write_text_atomic(out / "eval.csv", write_csv_rows(cols, eval_csv_rows(tables, mixers))))
        for t in tables:
            if t.key in LONG_TASKS and t.rows:
                plot_long_task(out / f"{t.key}.png", t, mixers)
                paths.append(out / f"{t.key}.png")
    if cost:
        cols = ["model", "length", "examples", "time_s_mean", "peak_mem_gib_max", "input_tokens_mean"]
        paths.append(write_text_atomic(out / "eval_cost.csv", write_csv_rows(cols, cost)))
    if speed:
        cols = [
            "device",
            "preset",
            "dtype",
            "level",
            "mode",
            "mixer",
            "decode_batch",
            "T",
            "tokens_per_s",
            "us_per_step",
            "source",
        ]
        paths.append(write_text_atomic(out / "speed.csv", write_csv_rows(cols, speed)))
    if mqar:
        cols = ["sweep", *MQAR_SETTINGS, "mixer", "seq_len", "num_pairs", "dim", "accuracy", "lr", "seeds"]
        paths.append(write_text_atomic(out / "mqar.csv", write_csv_rows(cols, mqar)))
    return ReportResult(paths, base, tables, _summary(tables), notes)
