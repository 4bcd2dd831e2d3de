"""The comparison tables: scores per task x length, category averages, baseline differences; speed and MQAR
summary tables (see :mod:`gkabench.report`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .read import LONG_METRICS, _mean, LONG_TASKS, PAPER_SHORT_TASKS, SHORT_LABELS, Score, fmt_len


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
                    (f"{r['accuracy']:.3f}" + (f" ({r['lr']:g})" if isinstance(r.get("lr"), (int, float)) else "")
                     + (f", mean of {r['seeds']} seeds" if (r.get("seeds") or 1) > 1 else ""))
                    if r
                    else "-"
                )
            body.append(cells)
        out.append(
            (
                f"MQAR best accuracy over learning rates ({sweep}{'; ' + setting if setting else ''}"
                + (f"; lrs run: {sel[0]['lrs_run']}" if sel[0].get("lrs_run") else "")
                + "; in parentheses: the best lr)",
                ["mixer"] + [f"T{T} P{P} d{d}" for T, P, d in cols],
                body,
            )
        )
    return out


