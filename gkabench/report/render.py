"""Writing the report: markdown, CSV and one PNG per long-context task (see :mod:`gkabench.report`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..io import save_figure_atomic
from .read import LONG_TASKS, fmt_len
from .tables import Cell, Table, data_source, mqar_tables, speed_tables


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
    save_figure_atomic(fig, path, dpi=110)


