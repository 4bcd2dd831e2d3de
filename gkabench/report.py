"""``gkabench report``: comparison tables from everything under ``results/``.

Reads (each folder optional, unknown fields ignored, unreadable lines skipped):

- ``results/eval/*.jsonl``: one row per score. Fields read: ``model`` (default: the file name), ``mixer``,
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
  setting (vocab, steps, batch, layers, heads, head_dim, seed: a rerun with other settings gets its own table).

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

import csv
import io
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .io import write_text_atomic

# The GKA paper's 10 short-context lm-eval tasks and the metric its table reports for each.
PAPER_SHORT_TASKS: dict[str, str] = {
    "arc_challenge": "acc_norm", "arc_easy": "acc_norm", "boolq": "acc", "copa": "acc", "hellaswag": "acc_norm",
    "piqa": "acc_norm", "sciq": "acc_norm", "winogrande": "acc", "fda": "contains", "swde": "contains",
}  # fmt: skip
SHORT_LABELS = {"arc_challenge": "ARC-C", "arc_easy": "ARC-E", "boolq": "BoolQ", "copa": "COPA", "hellaswag": "HellaSwag",
                "piqa": "PIQA", "sciq": "SciQ", "winogrande": "Winogrande", "fda": "FDA", "swde": "SWDE"}  # fmt: skip
# Long-context tasks: flavours in display order and which of them the paper averages.
LONG_TASKS: dict[str, dict] = {
    "rag": {"title": "RAG (HELMET construction, SubEM)", "flavours": ["nq", "triviaqa", "popqa", "hotpotqa"],
            "average": ["nq", "triviaqa", "popqa", "hotpotqa"]},
    "longqa": {"title": "LongQA (RULER construction, SubEM)", "flavours": ["squad", "hotpotqa"], "average": ["squad", "hotpotqa"]},
    "niah": {"title": "NIAH (RULER needles; not a paper category)", "flavours": ["niah_single", "niah_multikey"], "average": []},
}  # fmt: skip
LONG_METRICS = ("subem", "sub_em", "substring_exact_match", "score", "accuracy", "acc", "exact_match", "em", "contains")
DEFAULT_BASELINE = "gated_deltanet"


# ------------------------------------------------------------------------------------------------- reading
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted write
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _jsonl_files(folder: Path) -> list[Path]:
    """Every JSONL under ``folder``, subfolders included (one folder per run keeps results/ walkable)."""
    return sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []


def parse_length(v) -> int | None:
    """``8192`` / ``"8k"`` / ``"8192"`` -> 8192; None or unreadable -> None."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(v)
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(v))
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()]


def fmt_len(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else str(n)


def _split_task(task: str, flavour) -> tuple[str, str | None]:
    task = str(task)
    if flavour:
        return task, str(flavour)
    for sep in ("/", ":"):
        if sep in task:
            a, b = task.split(sep, 1)
            if a in LONG_TASKS:
                return a, b
    for name, spec in LONG_TASKS.items():
        if task.startswith(name + "_") and task[len(name) + 1 :] in spec["flavours"]:
            return name, task[len(name) + 1 :]
    return task, None


@dataclass
class Score:
    model: str
    mixer: str | None
    task: str
    flavour: str | None
    length: int | None
    metric: str
    value: float  # percent
    filter: str | None = None
    n: int | None = None


def read_eval(folder: Path) -> list[Score]:
    """Scores from ``folder/*.jsonl`` (see the module doc for the fields read)."""
    last: dict[tuple, dict] = {}
    per_example: dict[tuple, dict] = defaultdict(dict)
    latest: dict[str, tuple] = {}  # model -> (checkpoint fingerprint, generator, tokenizer) of its last row
    for path in _jsonl_files(folder):
        for r in _read_jsonl(path):
            if not r.get("task"):
                continue
            metric = str(r.get("metric") or "score")
            value = r.get("value", r.get("score", r.get(metric)))
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                continue
            task, flavour = _split_task(r["task"], r.get("flavour") or r.get("subtask"))
            length = parse_length(r.get("length", r.get("seq_len", r.get("target_length"))))
            model = str(r.get("model") or path.stem)
            key = (model, task, flavour, length, metric, r.get("filter"))
            mixer = r.get("mixer") or (
                ",".join(map(str, r["mixers"])) if isinstance(r.get("mixers"), list) and r["mixers"] else None
            )
            meta = {"mixer": mixer, "n": r.get("n")}
            pct = float(value) * (1.0 if float(value) > 1.0 else 100.0)
            if "index" in r:  # one example (gkabench eval's rows): the last row per example counts
                ident = (r.get("model_fingerprint"), r.get("generator_version"), r.get("tokenizer_hash"))
                latest[model] = ident
                per_example[key][(r["index"], r.get("seed"), r.get("source"), r.get("depth"))] = (pct, meta, ident)
            else:
                last[key] = {"value": pct, **meta}
    for key, by_index in per_example.items():
        # only the rows of the model's latest checkpoint / task generator / tokenizer (older ones are stale)
        by_index = {k: v for k, v in by_index.items() if v[2] == latest[key[0]]}
        if not by_index:
            continue
        vals = [v for v, _, _ in by_index.values()]
        meta = list(by_index.values())[-1][1]
        last.setdefault(key, {"value": sum(vals) / len(vals), "mixer": meta["mixer"], "n": len(vals)})
    out = []
    for (model, task, flavour, length, metric, filt), v in last.items():
        out.append(Score(model, v["mixer"], task, flavour, length, metric, v["value"], filt, v["n"]))
    return out


def read_eval_cost(folder: Path) -> list[dict]:
    """Time and peak memory per (model, length) from per-example long-context rows (``time_s``,
    ``peak_mem_gib``, ``input_tokens``): mean seconds per example, max peak GiB, mean input tokens."""
    acc: dict[tuple, dict] = {}
    for path in _jsonl_files(folder):
        for r in _read_jsonl(path):
            task, _ = _split_task(r.get("task") or "", r.get("flavour"))
            length = parse_length(r.get("length", r.get("seq_len")))
            if task not in LONG_TASKS or length is None or not isinstance(r.get("time_s"), (int, float)):
                continue
            a = acc.setdefault((str(r.get("model") or path.stem), length), {"time": [], "peak": [], "tokens": []})
            a["time"].append(float(r["time_s"]))
            if isinstance(r.get("peak_mem_gib"), (int, float)):
                a["peak"].append(float(r["peak_mem_gib"]))
            if isinstance(r.get("input_tokens"), (int, float)):
                a["tokens"].append(float(r["input_tokens"]))
    return [{"model": m, "length": L, "examples": len(a["time"]), "time_s_mean": _mean(a["time"]),
             "peak_mem_gib_max": max(a["peak"]) if a["peak"] else None, "input_tokens_mean": _mean(a["tokens"])}
            for (m, L), a in acc.items()]  # fmt: skip


# ----------------------------------------------------------------------------------------------- the tables
@dataclass
class Cell:
    """One model's value in one column, with the baseline's and the differences."""

    value: float | None
    parts: int = 1
    complete: bool = True
    base: float | None = None
    metric: str | None = None

    @property
    def abs_diff(self) -> float | None:
        return None if self.value is None or self.base is None else self.value - self.base

    @property
    def rel_diff(self) -> float | None:
        """Relative difference in percent; None when the baseline is 0 or missing."""
        if self.value is None or not self.base:
            return None
        return 100.0 * (self.value - self.base) / self.base


@dataclass
class Table:
    key: str  # rag, longqa, niah, short, other
    title: str
    columns: list[tuple[str, str | None, int | None]]  # (label, task/flavour id, length)
    rows: dict[str, dict[int, Cell]] = field(default_factory=dict)  # model -> column index -> cell
    notes: list[str] = field(default_factory=list)


def relative_diff(value: float | None, base: float | None) -> float | None:
    """(value - base) / base in percent; None when either is missing or the baseline is 0."""
    return Cell(value, base=base).rel_diff


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pick_long_metric(scores: list[Score]) -> dict[tuple, Score]:
    """One score per (model, task, flavour, length): the first metric of LONG_METRICS present, else any."""
    best: dict[tuple, Score] = {}
    rank = {m: i for i, m in enumerate(LONG_METRICS)}
    for s in scores:
        k = (s.model, s.task, s.flavour, s.length)
        cur = best.get(k)
        if cur is None or rank.get(s.metric.lower(), 99) < rank.get(cur.metric.lower(), 99):
            best[k] = s
    return best


def build_tables(scores: list[Score]) -> list[Table]:
    tables: list[Table] = []
    models = list(dict.fromkeys(s.model for s in scores))
    long_scores = _pick_long_metric([s for s in scores if s.task in LONG_TASKS])
    for task, spec in LONG_TASKS.items():
        sel = {k: s for k, s in long_scores.items() if k[1] == task}
        if not sel:
            continue
        lengths = sorted({k[3] for k in sel if k[3] is not None}) or [None]
        flavours = [f for f in spec["flavours"] if any(k[2] == f for k in sel)]
        flavours += sorted({k[2] for k in sel if k[2] not in flavours and k[2] is not None})
        cols: list[tuple[str, str | None, int | None]] = []
        for L in lengths:
            cols += [(f"{f} {fmt_len(L)}".strip(), f, L) for f in flavours]
            if spec["average"]:
                cols.append((f"avg {fmt_len(L)}".strip(), "avg", L))
        t = Table(task, spec["title"], cols)
        for m in models:
            cells = {}
            for i, (_, f, L) in enumerate(cols):
                if f == "avg":
                    parts = [sel[(m, task, p, L)].value for p in spec["average"] if (m, task, p, L) in sel]
                    if parts:
                        cells[i] = Cell(_mean(parts), len(parts), len(parts) == len(spec["average"]))
                elif (m, task, f, L) in sel:
                    cells[i] = Cell(sel[(m, task, f, L)].value, metric=sel[(m, task, f, L)].metric)
            if cells:
                t.rows[m] = cells
        metrics = sorted({s.metric for s in sel.values()})
        t.notes.append(f"metric: {', '.join(metrics)} (percent); columns: flavour x input length in tokens"
                       + (f"; avg = mean of {', '.join(spec['average'])} (the paper's {task} average)" if spec["average"] else ""))  # fmt: skip
        tables.append(t)

    # short-context lm-eval tasks with the paper's metric per task
    short = {}
    for s in scores:
        if s.task in PAPER_SHORT_TASKS and s.metric == PAPER_SHORT_TASKS[s.task] and s.length is None:
            k = (s.model, s.task)
            if k not in short or (s.filter in (None, "none") and short[k].filter not in (None, "none")):
                short[k] = s
    if short:
        tasks = [t for t in PAPER_SHORT_TASKS if any(k[1] == t for k in short)]
        cols = [(f"{SHORT_LABELS[t]} ({PAPER_SHORT_TASKS[t]})", t, None) for t in tasks] + [("avg", "avg", None)]
        t = Table("short", "Short-context lm-eval tasks (the paper's 10; metric per task as in its table)", cols)
        for m in models:
            cells = {
                i: Cell(short[(m, task)].value, metric=short[(m, task)].metric)
                for i, (_, task, _) in enumerate(cols)
                if (m, task) in short
            }
            if cells:
                parts = [c.value for c in cells.values()]
                cells[len(cols) - 1] = Cell(_mean(parts), len(parts), len(parts) == len(PAPER_SHORT_TASKS))
                t.rows[m] = cells
        t.notes.append("avg = mean of the 10 tasks (marked * when fewer are present), as the paper averages them")
        tables.append(t)

    # anything else (other lm-eval tasks, other metrics): task:metric columns, one per length
    used = {(s.model, s.task, s.metric) for s in short.values()}
    other = [s for s in scores if s.task not in LONG_TASKS and (s.model, s.task, s.metric) not in used]
    if other:
        keys = list(dict.fromkeys((s.task, s.flavour, s.metric, s.length) for s in other))
        cols = [(":".join(x for x in (task, flav, metric) if x) + (f" {fmt_len(L)}" if L else ""), f"{task}|{flav}|{metric}", L)
                for task, flav, metric, L in keys]  # fmt: skip
        t = Table("other", "Other scores", cols)
        index = {(s.model, f"{s.task}|{s.flavour}|{s.metric}", s.length): s for s in other}
        for m in models:
            cells = {
                i: Cell(index[(m, c[1], c[2])].value, metric=index[(m, c[1], c[2])].metric)
                for i, c in enumerate(cols)
                if (m, c[1], c[2]) in index
            }
            if cells:
                t.rows[m] = cells
        tables.append(t)
    return tables


def data_source(model: str) -> str | None:
    """Which data a model's rows come from: ``<folder>`` for a ``name@<folder>`` model (``gkabench eval --data``:
    real data), None for the generated facts."""
    return model.split("@", 1)[1] if "@" in model else None


def resolve_baseline(
    scores: list[Score], baseline: str | None, strict: bool = True, notes: list[str] | None = None
) -> str | None:
    """The model name ``baseline`` refers to: a model name, or the mixer of exactly one model. A one-line
    ValueError when it matches none or several (``strict``). Not strict (the default baseline): of several models
    with that mixer the one without ``@<data folder>`` (generated data) when there is exactly one, else none; a
    line saying which goes to ``notes``."""
    if not baseline or not scores:
        return None
    models = list(dict.fromkeys(s.model for s in scores))
    if baseline in models:
        return baseline
    by_mixer = list(dict.fromkeys(s.model for s in scores if s.mixer == baseline))
    if len(by_mixer) == 1:
        return by_mixer[0]
    if len(by_mixer) > 1 and not strict:
        plain = [m for m in by_mixer if data_source(m) is None]
        pick = plain[0] if len(plain) == 1 else None
        if notes is not None:
            notes.append(
                f"Several models have the mixer `{baseline}` ({', '.join(by_mixer)}): "
                + (f"baseline `{pick}` (generated data); " if pick else "no baseline; ")
                + "pass --baseline MODEL to choose."
            )
        return pick
    if len(by_mixer) > 1:
        raise ValueError(
            f"baseline {baseline!r} is the mixer of several models ({', '.join(by_mixer)}); pass --baseline MODEL with one of them"
        )
    if strict:
        mixers = sorted({s.mixer for s in scores if s.mixer})
        raise ValueError(f"baseline {baseline!r} is not a model or mixer in the eval results (models: {', '.join(models)}"
                         + (f"; mixers: {', '.join(mixers)}" if mixers else "") + "); pass --baseline NAME with one of them")  # fmt: skip
    return None


def apply_baseline(tables: list[Table], baseline: str | None) -> None:
    """Set each cell's baseline value; none for a model whose rows come from other data than the baseline's
    (``name@<folder>``: real data, plain name: generated), as those scores are not comparable."""
    for t in tables:
        base = t.rows.get(baseline) if baseline else None
        for m, cells in t.rows.items():
            comparable = base is not None and data_source(m) == data_source(baseline)
            for i, c in cells.items():
                c.base = base[i].value if comparable and i in base else None


# ------------------------------------------------------------------------------------------------- speed, mqar
def read_speed(folder: Path) -> list[dict]:
    """The last ``ok`` speed row per (device, preset, dtype, sizes, level, mode, mixer, T, decode batch); ``sizes`` is
    the sweep's fingerprint of heads, head dim, hidden, tokens and num_iter, so runs at other sizes never merge."""
    last: dict[tuple, dict] = {}
    for path in _jsonl_files(folder):
        for r in _read_jsonl(path):
            if r.get("status") != "ok" or r.get("mixer") is None or r.get("T") is None:
                continue
            tps = r.get("tokens_per_s")
            if tps is None and r.get("us_per_step"):
                tps = (r.get("decode_batch") or 1) / (r["us_per_step"] * 1e-6)
            if tps is None:
                continue
            dev = (r.get("env") or {}).get("device") or r.get("device") or "?"
            key = (
                dev,
                r.get("preset"),
                r.get("dtype"),
                r.get("sizes"),
                r.get("level"),
                r.get("mode"),
                r["mixer"],
                int(r["T"]),
                r.get("decode_batch"),
            )
            last[key] = {"device": dev, "preset": r.get("preset"), "dtype": r.get("dtype"), "sizes": r.get("sizes"), "level": r.get("level"),
                         "mode": r.get("mode"), "mixer": r["mixer"], "T": int(r["T"]), "decode_batch": r.get("decode_batch"),
                         "tokens_per_s": float(tps), "us_per_step": r.get("us_per_step"), "source": path.name}  # fmt: skip
    return list(last.values())


# A sweep's training settings besides the cell (mixer, seq_len, pairs, dim) and the lr: runs that differ in any of
# these (a rerun of the same sweep file with other --steps, --vocab, --batch-size...) are not compared.
MQAR_SETTINGS = ("vocab_size", "steps", "batch_size", "num_layers", "num_heads", "head_dim", "seed")


def _mqar_setting(r: dict) -> str:
    short = {"vocab_size": "vocab", "batch_size": "batch", "num_layers": "layers", "num_heads": "heads"}
    return ", ".join(f"{short.get(k, k)} {r[k]}" for k in MQAR_SETTINGS if r.get(k) is not None)


def read_mqar(folder: Path) -> list[dict]:
    """Best accuracy over learning rates per (sweep file, training settings, mixer, seq_len, pairs, dim); the
    settings (``MQAR_SETTINGS``: vocab, steps, batch...) as the sweep's own markdown keeps them apart."""
    best: dict[tuple, dict] = {}
    for path in _jsonl_files(folder):
        for r in _read_jsonl(path):
            acc = r.get("accuracy")
            if not isinstance(acc, (int, float)) or r.get("mixer") is None:
                continue
            setting = _mqar_setting(r)
            key = (path.stem, setting, r["mixer"], r.get("seq_len"), r.get("num_pairs"), r.get("dim"))
            if key not in best or acc > best[key]["accuracy"]:
                best[key] = {"sweep": path.stem, "setting": setting, "mixer": r["mixer"], "seq_len": r.get("seq_len"),
                             "num_pairs": r.get("num_pairs"), "dim": r.get("dim"), "accuracy": float(acc), "lr": r.get("lr"),
                             **{k: r.get(k) for k in MQAR_SETTINGS}}  # fmt: skip
    return list(best.values())


def _fmt_tps(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def speed_tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []

    def group(r: dict) -> tuple:
        return (r["device"], r["preset"], r["dtype"], r.get("sizes"), r["level"], r["mode"])

    for key in dict.fromkeys(group(r) for r in rows):
        dev, preset, dtype, sizes, level, mode = key
        sel = [r for r in rows if group(r) == key]
        lengths = sorted({r["T"] for r in sel})
        series = list(dict.fromkeys((r["mixer"], r["decode_batch"]) for r in sel))
        body = []
        for mixer, b in series:
            cells = [mixer + (f" (batch {b})" if b else "")]
            for T in lengths:
                r = next((r for r in sel if r["mixer"] == mixer and r["decode_batch"] == b and r["T"] == T), None)
                cells.append(_fmt_tps(r["tokens_per_s"]) if r else "-")
            body.append(cells)
        title = f"{dev}: {level} {mode}, preset {preset}, {dtype}" + (f", {sizes}" if sizes else "") + " (tokens/s)"
        out.append((title, ["mixer"] + [fmt_len(T) for T in lengths], body))
    return out


def mqar_tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for sweep, setting in dict.fromkeys((r["sweep"], r.get("setting")) for r in rows):
        sel = [r for r in rows if r["sweep"] == sweep and r.get("setting") == setting]
        cols = sorted({(r["seq_len"] or 0, r["num_pairs"] or 0, r["dim"] or 0) for r in sel})
        body = []
        for mixer in dict.fromkeys(r["mixer"] for r in sel):
            cells = [mixer]
            for T, P, d in cols:
                r = next(
                    (
                        r
                        for r in sel
                        if r["mixer"] == mixer and (r["seq_len"] or 0, r["num_pairs"] or 0, r["dim"] or 0) == (T, P, d)
                    ),
                    None,
                )
                cells.append(
                    (f"{r['accuracy']:.3f}" + (f" ({r['lr']:g})" if isinstance(r.get("lr"), (int, float)) else ""))
                    if r
                    else "-"
                )
            body.append(cells)
        out.append(
            (
                f"MQAR best accuracy over learning rates ({sweep}{'; ' + setting if setting else ''}; in parentheses: that lr)",
                ["mixer"] + [f"T{T} P{P} d{d}" for T, P, d in cols],
                body,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------- writing
def _md_table(columns: list[str], body: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def _num(v: float | None, spec: str = ".2f", sign: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if sign else "") + spec)


def _cell_text(c: Cell | None) -> str:
    if c is None or c.value is None:
        return "-"
    return f"{c.value:.2f}" + ("" if c.complete else "*")


def _diff_text(c: Cell | None) -> str:
    if c is None or c.value is None or c.base is None:
        return "-"
    rel = c.rel_diff
    return (
        f"{_num(c.abs_diff, '.2f', True)} ({_num(rel, '.1f', True)}%)"
        if rel is not None
        else _num(c.abs_diff, ".2f", True)
    )


def _label(model: str, mixers: dict[str, str | None]) -> str:
    mx = mixers.get(model)
    return f"{model} ({mx})" if mx and mx != model else model


def markdown(
    tables: list[Table],
    baseline: str | None,
    mixers: dict,
    speed: list[dict],
    mqar: list[dict],
    results: Path,
    note: str | None,
    cost: list[dict] | None = None,
) -> str:
    lines = ["# gkabench report", "", f"From everything under `{results}/`. Scores in percent."]
    if baseline:
        lines.append(f"Baseline for differences: **{baseline}**; difference cells: absolute points (relative %), "
                     "relative = (model - baseline) / baseline.")  # fmt: skip
    if note:
        lines.append(note)
    lines.append("")
    summary = _summary(tables)
    if summary[1]:
        lines += ["## Category averages (as the paper computes them)", ""]
        lines += _md_table(
            summary[0], [[_label(m, mixers)] + [_cell_text(c) for c in cells] for m, cells in summary[1]]
        )
        lines.append("")
        if baseline:
            lines += [f"### Differences against {baseline}", ""]
            lines += _md_table(
                summary[0],
                [[_label(m, mixers)] + [_diff_text(c) for c in cells] for m, cells in summary[1]
                 if m != baseline and data_source(m) == data_source(baseline)],
            )  # fmt: skip
            lines.append("")
    for t in tables:
        lines += [f"## {t.title}", ""]
        cols = ["model"] + [c[0] for c in t.columns]
        lines += _md_table(
            cols,
            [
                [_label(m, mixers)] + [_cell_text(cells.get(i)) for i in range(len(t.columns))]
                for m, cells in t.rows.items()
            ],
        )
        lines.append("")
        if baseline and baseline in t.rows and len(t.rows) > 1:
            lines += [f"Differences against {baseline}:", ""]
            lines += _md_table(cols, [[_label(m, mixers)] + [_diff_text(cells.get(i)) for i in range(len(t.columns))]
                                      for m, cells in t.rows.items()
                                      if m != baseline and data_source(m) == data_source(baseline)])  # fmt: skip
            lines.append("")
        lines += [f"- {n}" for n in t.notes]
        if any(not c.complete for cells in t.rows.values() for c in cells.values()):
            lines.append("- `*`: average over fewer parts than the paper's (some scores missing)")
        lines.append("")
    if cost:
        lengths = sorted({c["length"] for c in cost})
        body = []
        for m in dict.fromkeys(c["model"] for c in cost):
            cells = [_label(m, mixers)]
            for L in lengths:
                c = next((c for c in cost if c["model"] == m and c["length"] == L), None)
                peak = "" if c is None or c["peak_mem_gib_max"] is None else f" / {c['peak_mem_gib_max']:.2f} GiB"
                cells.append("-" if c is None else f"{c['time_s_mean']:.3g} s{peak}")
            body.append(cells)
        lines += ["## Long-context cost per length (mean seconds per example / peak GPU memory)", ""]
        lines += _md_table(["model"] + [fmt_len(L) for L in lengths], body) + [""]
    if speed:
        lines += ["## Speed (tokens/s; decode: tokens/s over the batch)", ""]
        for title, cols, body in speed_tables(speed):
            lines += [f"### {title}", ""] + _md_table(cols, body) + [""]
    if mqar:
        lines += ["## MQAR", ""]
        for title, cols, body in mqar_tables(mqar):
            lines += [f"### {title}", ""] + _md_table(cols, body) + [""]
    if not tables and not speed and not mqar:
        lines += [f"No results found under `{results}/` (eval/, speed/, mqar/).", ""]
    return "\n".join(lines)


def _summary(tables: list[Table]) -> tuple[list[str], list[tuple[str, list[Cell | None]]]]:
    """Columns: every category average (RAG avg per length, LongQA avg per length, short avg)."""
    names = {"rag": "RAG", "longqa": "LongQA", "short": "short-context"}
    cols, picks = ["model"], []
    for t in tables:
        if t.key not in names:
            continue
        for i, (_, f, L) in enumerate(t.columns):
            if f == "avg":
                cols.append(f"{names[t.key]} {fmt_len(L)}" if L else f"{names[t.key]} avg")
                picks.append((t, i))
    models = list(dict.fromkeys(m for t, _ in picks for m in t.rows))
    body = [(m, [t.rows.get(m, {}).get(i) for t, i in picks]) for m in models]
    return cols, body


def write_csv_rows(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def eval_csv_rows(tables: list[Table], mixers: dict) -> list[dict]:
    out = []
    for t in tables:
        for m, cells in t.rows.items():
            for i, c in cells.items():
                _, ident, L = t.columns[i]
                if ident == "avg":
                    task, flavour = (t.key if t.key in LONG_TASKS else "short"), "avg"
                elif t.key in LONG_TASKS:
                    task, flavour = t.key, ident
                elif t.key == "short":
                    task, flavour = ident, None
                else:
                    task, flavour = (
                        ident.split("|")[0],
                        (ident.split("|")[1] if ident.split("|")[1] != "None" else None),
                    )
                out.append({"model": m, "mixer": mixers.get(m), "category": t.key, "task": task, "flavour": flavour, "length": L,
                            "metric": c.metric, "value": c.value, "parts": c.parts, "complete": c.complete, "baseline_value": c.base,
                            "abs_diff": c.abs_diff, "rel_diff_pct": c.rel_diff})  # fmt: skip
    return out


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_long_task(path: Path, t: Table, mixers: dict) -> None:
    """Score vs input length, one line per model; a panel per flavour plus the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(c[1] for c in t.columns))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for j, (m, cells) in enumerate(t.rows.items()):
            pts = sorted(
                (L, cells[i].value)
                for i, (_, f, L) in enumerate(t.columns)
                if f == panel and i in cells and L is not None
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    ms=3,
                    color=f"C{j % 10}",
                    label=_label(m, mixers),
                )
        ax.set_xscale("log", base=2)
        lengths = sorted({L for _, f, L in t.columns if f == panel and L})
        if lengths:
            ax.set_xticks(lengths, [fmt_len(L) for L in lengths])
        ax.set_title(panel if panel != "avg" else f"{t.key} average", fontsize=10)
        ax.set_xlabel("input tokens")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("score (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(t.title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _write_bytes_atomic(path, buf.getvalue())


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
        cols = ["sweep", *MQAR_SETTINGS, "mixer", "seq_len", "num_pairs", "dim", "accuracy", "lr"]
        paths.append(write_text_atomic(out / "mqar.csv", write_csv_rows(cols, mqar)))
    return ReportResult(paths, base, tables, _summary(tables), notes)
