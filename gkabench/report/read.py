"""Reading ``results/``: eval scores and costs, speed rows, MQAR rows (see :mod:`gkabench.report`)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


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


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


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
# not num_heads: in a sweep it follows the model dim (dim / head_dim), and a sweep with fixed heads is its own file
MQAR_SETTINGS = ("vocab_size", "steps", "batch_size", "num_layers", "head_dim", "curriculum")


def _mqar_setting(r: dict) -> str:
    short = {"vocab_size": "vocab", "batch_size": "batch", "num_layers": "layers", "num_heads": "heads"}

    def label(k):  # rows before session 6 lack "curriculum" (they trained on P pairs only) and show no label
        if k == "curriculum":
            return "pair-count mixture" if r[k] else "P pairs only"
        return f"{short.get(k, k)} {r[k]}"

    return ", ".join(label(k) for k in MQAR_SETTINGS if r.get(k) is not None)


def read_mqar(folder: Path) -> list[dict]:
    """Best accuracy over learning rates per (sweep file, training settings, mixer, seq_len, pairs, dim), as the
    sweep's own tables choose it (``mqar_tables.best_per_cell``: with several seeds, the lr chosen on the first and
    the mean over the seeds at it); the settings (``MQAR_SETTINGS``: vocab, steps, batch...) keep runs apart."""
    from ..tasks.mqar_tables import best_per_cell

    groups: dict[tuple, list[dict]] = {}
    for path in _jsonl_files(folder):
        for r in _read_jsonl(path):
            if isinstance(r.get("accuracy"), (int, float)) and r.get("mixer") is not None and not r.get("error"):
                groups.setdefault((path.stem, _mqar_setting(r)), []).append(r)
    out = []
    for (sweep, setting), rows in groups.items():
        first = rows[0]
        # every lr the file holds, not only a grid's own: a side run at another lr may win a cell here
        lrs_run = ", ".join(f"{lr:g}" for lr in sorted({float(r["lr"]) for r in rows if r.get("lr") is not None}))
        for b in best_per_cell(rows).itertuples():
            out.append({"sweep": sweep, "setting": setting, "mixer": b.mixer, "seq_len": b.seq_len, "num_pairs": b.num_pairs,
                        "dim": b.dim, "accuracy": float(b.accuracy), "lr": b.lr, "seeds": int(b.seeds),
                        "lrs_run": lrs_run, **{k: first.get(k) for k in MQAR_SETTINGS}})  # fmt: skip
    return out


