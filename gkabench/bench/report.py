"""Derived outputs of a speed sweep (the JSONL rows are the source): CSV, a markdown report with the tables a
paper would print, and a log-log plot of tokens/s vs T per mode. Every file is written atomically."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timezone
from pathlib import Path

from ..io import save_figure_atomic, write_atomic
from .config import MODES, PRESETS

MODE_TITLES = {"fwd": "forward", "fwdbwd": "forward + backward", "prefill": "prefill (forward + final state, no grad)",
               "decode": "decode (one token per sequence, after a prefill of length T)"}  # fmt: skip
LEVEL_TITLES = {"op": "core op only", "layer": "full layer (projections, convs, norms)"}
CSV_COLUMNS = ["level", "mode", "mixer", "T", "decode_batch", "batch", "tokens", "status", "median_ms", "p20_ms",
               "p80_ms", "reps", "tokens_per_s", "us_per_step", "graph_us_per_step", "graph_status", "peak_bytes", "state_bytes", "tflops", "flops",
               "heads", "key_dim", "value_dim", "params", "prefill_batch", "op", "preset", "dtype", "sizes", "hidden",
               "num_iter", "token_budget", "fixed_batch", "lift_fla_guard", "fla_guard_lifted", "fla_guard_active", "tag", "time_utc"]  # fmt: skip
ENV_COLUMNS = ["device", "driver", "cuda", "torch", "triton", "fla", "git_sha", "code_hash", "command"]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def device_slug(device_name: str) -> str:
    if device_name.lower().startswith("cpu"):
        return "cpu"
    return slug(device_name.replace("NVIDIA", "nvidia"))


def output_stem(out: Path, device_name: str, tag: str, *, resume: bool = False, date: str | None = None) -> Path:
    """``<out>/<date>-<gpu>-<tag>``; with ``resume`` the newest existing ``*-<gpu>-<tag>.jsonl`` if any."""
    dev = device_slug(device_name)
    if resume:
        found = sorted(out.glob(f"*-{dev}-{slug(tag)}.jsonl"))
        if found:
            return found[-1].with_suffix("")
    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return out / f"{date}-{dev}-{slug(tag)}"


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per cell (the last measured), keeping the first-seen order."""
    last: dict[tuple, dict] = {}
    for r in rows:
        last[(r.get("preset"), r.get("dtype"), r.get("sizes"), r.get("level"), r.get("mode"), r.get("mixer"), r.get("T"),
              r.get("decode_batch"))] = r  # fmt: skip
    return list(last.values())


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS + [f"env_{c}" for c in ENV_COLUMNS])
    for r in rows:
        env = r.get("env") or {}
        w.writerow([_csv(r.get(c)) for c in CSV_COLUMNS] + [_csv(env.get(c)) for c in ENV_COLUMNS])
    write_atomic(path, buf.getvalue())


def _csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def fmt_len(T: int) -> str:
    return f"{T // 1024}k" if T % 1024 == 0 else str(T)


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _status_cell(r: dict) -> str:
    s = str(r.get("status", ""))
    head = s.split(":")[0]
    return {"oom": "OOM", "slow": "slow", "skipped": "skip", "crash": "crash"}.get(head, "err")


def _us(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def tables(rows: list[dict]) -> list[dict]:
    """Paper tables: one per (level, mode), rows mixers (x decode batch), columns lengths.
    Each is ``{"title", "unit", "columns", "rows": [[...]], "notes"}``; cells are strings."""
    rows = latest_rows(rows)
    out = []
    levels = [lv for lv in ("op", "layer") if any(r.get("level") == lv for r in rows)]
    for level in levels:
        for mode in MODES:
            sel = [r for r in rows if r.get("level") == level and r.get("mode") == mode]
            if not sel:
                continue
            lengths = sorted({r["T"] for r in sel})
            mixers = list(dict.fromkeys(r["mixer"] for r in sel))
            decode = mode == "decode"
            ok_vals = [r["tokens_per_s"] for r in sel if r.get("status") == "ok" and r.get("tokens_per_s")]
            graphed = decode and any(r.get("graph_us_per_step") for r in sel)
            if decode:
                unit, scale = "us per step (one token per sequence); lower is better", None
                if graphed:
                    unit = ("us per step (one token per sequence), eager / replayed as a CUDA graph (no launch cost); "
                            "lower is better")  # fmt: skip
            elif ok_vals and sorted(ok_vals)[len(ok_vals) // 2] >= 1e6:
                unit, scale = "M tokens/s; higher is better", 1e6
            else:
                unit, scale = "k tokens/s; higher is better", 1e3
            gka_tflops = level == "op" and mode in ("fwd", "fwdbwd") and any(r.get("tflops") for r in sel)
            cols = ["mixer"] + (["batch"] if decode else []) + [fmt_len(T) for T in lengths] + ["state/seq", "peak mem"]
            body = []
            groups = [(m, b) for m in mixers for b in sorted({r.get("decode_batch") or 0 for r in sel if r["mixer"] == m})]
            for m, b in groups:
                cells = [m] + ([str(b)] if decode else [])
                state, peak = None, None
                for T in lengths:
                    r = next((r for r in sel if r["mixer"] == m and r["T"] == T and (r.get("decode_batch") or 0) == b), None)
                    if r is None:
                        cells.append("-")
                        continue
                    if r.get("status") != "ok":
                        cells.append(_status_cell(r))
                        continue
                    if decode:
                        cell = _us(r["us_per_step"])
                        if graphed:
                            cell += " / " + (_us(r["graph_us_per_step"]) if r.get("graph_us_per_step") else "-")
                        cells.append(cell)
                    else:
                        v = r["tokens_per_s"] / scale
                        cells.append(f"{v:.3g}" if v < 100 else f"{v:.0f}")
                    state = r.get("state_bytes", state)
                    peak = r.get("peak_bytes") if r.get("peak_bytes") is not None else peak
                cells += [fmt_bytes(state), fmt_bytes(peak)]
                body.append(cells)
            notes = ["state/seq and peak mem (allocator peak above the inputs; GPU only) at the longest length measured."]
            if gka_tflops:
                t = {r["T"]: r["tflops"] for r in sel if r["mixer"] == "gka" and r.get("status") == "ok" and r.get("tflops")}
                notes.append("GKA achieved TFLOP/s (analytic count, gka-spec.md section 3): "
                             + ", ".join(f"{fmt_len(T)} {v:.3g}" for T, v in sorted(t.items())))  # fmt: skip
            bad = [f"{r['mixer']} {fmt_len(r['T'])}{' b' + str(r['decode_batch']) if r.get('decode_batch') else ''}: "
                   f"{r['status']}" for r in sel if r.get("status") != "ok"]  # fmt: skip
            if bad:
                notes.append("Not measured: " + "; ".join(bad))
            no_graph = [f"{r['mixer']} {fmt_len(r['T'])} b{r.get('decode_batch')}: {r['graph_status']}"
                        for r in sel if r.get("graph_status")]  # fmt: skip
            if no_graph:
                notes.append("Not replayed as a CUDA graph (eager figure only): " + "; ".join(no_graph[:6])
                             + (f"; and {len(no_graph) - 6} more" if len(no_graph) > 6 else ""))  # fmt: skip
            out.append({"title": f"{MODE_TITLES[mode]}, {LEVEL_TITLES[level]}", "level": level, "mode": mode,
                        "unit": unit, "columns": cols, "rows": body, "notes": notes})  # fmt: skip
    return out


def markdown(rows: list[dict], header: dict, env: dict, *, incomplete: str | None = None) -> str:
    cpu = env.get("device_type") == "cpu" or str(env.get("device", "")).startswith("CPU")
    preset = header.get("preset", "matched")
    lines = [f"# gkabench speed: {env.get('device')}", ""]
    if cpu:
        lines += ["> **CPU numbers** from the pure-PyTorch reference ops at small shapes. They show the harness runs;",
                  "> they say nothing about GPU speed.", ""]  # fmt: skip
    if incomplete:
        lines += [f"> **Incomplete sweep**: {incomplete}", ""]
    shapes = (f"heads {header.get('heads')} x head dim {header.get('head_dim')} for every mixer" if preset == "matched"
              else "each mixer at its registry defaults (shapes below)")  # fmt: skip
    budget = (f"{header['tokens']} tokens per call (B = tokens / T, at least 1)" if header.get("tokens")
              else f"fixed batch {header.get('batch')}")  # fmt: skip
    # from the rows (a resumed or merged sweep mixes runs with and without the guard), else the header
    lifted_in = sorted({r.get("mixer") for r in rows if r.get("fla_guard_lifted")})
    if any("fla_guard_lifted" in r for r in rows):
        guard = f"yes, in the runs of {', '.join(lifted_in)}" if lifted_in else "no"
    else:
        guard = "yes" if header.get("fla_guard_lifted") else "no"
    if header.get("lift_fla_guard") and not header.get("fla_guard_lifted") and not lifted_in:
        guard += " (asked for; it was not active here)"
    timer = "CUDA events (do_bench)" if not cpu else "perf_counter"
    lines += [
        f"- preset: **{preset}** ({PRESETS.get(preset, '')}); {shapes}; hidden {header.get('hidden')} (layer level)",
        (f"- dtype {header.get('dtype')}; {budget}; GKA num_iter {header.get('num_iter')}; decode batches "
         f"{', '.join(map(str, header.get('decode_batches') or []))}"),
        f"- sizes fingerprint (rows of this report, and what `--resume` matches on): `{header.get('sizes')}`",
        f"- fla Hopper guard (Triton < 3.7.1) lifted for timing: {guard}",
        ("- inputs as in ANCHORS.md (q, k, v ~ N(0,1), q/k L2-normalised for delta/ridge ops, log-decay "
         "logsigmoid(N(0,1)+4), beta sigmoid(U(0,1)), GKA alpha 0.5, ridge 0.02); median time, "
         f"{timer}, {header.get('input_sets')} rotated input sets"),
        "",
        *_shape_lines(rows),
        "| environment | |",
        "|---|---|",
    ]
    for k in ("device", "driver", "cuda", "torch", "triton", "fla", "python", "git_sha", "code_hash", "command"):
        if env.get(k) is not None:
            lines.append(f"| {k} | `{env[k]}` |")
    lines.append("")
    for t in tables(rows):
        lines += [f"## {t['title']}", "", f"{t['unit']}. Columns: sequence length T.", ""]
        lines.append("| " + " | ".join(t["columns"]) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(t["columns"]))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        lines.append("")
        lines += [f"- {n}" for n in t["notes"]]
        lines.append("")
    lines += [("Cells: OOM = out of memory; slow = one call exceeded the per-call limit; skip = not run (kernel "
               "unavailable, or slow/OOM at a shorter T); crash = broke the CUDA context; err = failure (see the "
               "JSONL status)."), ""]  # fmt: skip
    return "\n".join(lines)


def _shape_lines(rows: list[dict]) -> list[str]:
    """One line per level: each mixer's heads x key dim (/ value dim) as measured."""
    out = []
    for level in ("op", "layer"):
        seen: dict[str, str] = {}
        for r in rows:
            if r.get("level") == level and r.get("heads") and r["mixer"] not in seen:
                kv = f"{r.get('key_dim')}" + (f"/{r['value_dim']}" if r.get("value_dim") not in (None, r.get("key_dim")) else "")
                seen[r["mixer"]] = f"{r['mixer']} {r['heads']}x{kv}"
        if seen:
            out.append(f"- {level} shapes (heads x head dim[/value dim]): " + ", ".join(seen.values()))
    return out + [""] if out else out


def plot(path: Path, rows: list[dict], title: str) -> None:
    """Log-log tokens/s vs T: one panel per (level, mode); decode panels show batch 1 (solid) and the largest
    batch (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in latest_rows(rows) if r.get("status") == "ok" and r.get("tokens_per_s")]
    panels = [(lv, m) for lv in ("op", "layer") for m in MODES if any(r["level"] == lv and r["mode"] == m for r in rows)]
    n = max(1, len(panels))
    ncol = min(4, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(mixers)}
    for ax, (lv, mode) in zip(axes.flat, panels):
        sel = [r for r in rows if r["level"] == lv and r["mode"] == mode]
        for m in mixers:
            batches = sorted({r.get("decode_batch") or 0 for r in sel if r["mixer"] == m})
            show = [batches[0], batches[-1]] if len(batches) > 1 else batches
            for b in dict.fromkeys(show):
                pts = sorted((r["T"], r["tokens_per_s"]) for r in sel if r["mixer"] == m and (r.get("decode_batch") or 0) == b)
                if not pts:
                    continue
                label = m if b == show[0] else f"{m} b={b}"
                ls = "-" if b == show[0] else "--"
                ax.plot(*zip(*pts), ls, marker="o", ms=3, color=colors[m], label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{lv}: {mode}", fontsize=10)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("tokens/s")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)


def same_sizes(row: dict, header: dict) -> bool:
    """Whether ``row`` was measured at the preset, dtype and sizes fingerprint of ``header`` (a sweep's config)."""
    return (row.get("preset"), row.get("dtype"), row.get("sizes")) == (header.get("preset"), header.get("dtype"), header.get("sizes"))


def write_outputs(stem: Path, rows: list[dict], header: dict, env: dict, *, incomplete: str | None = None) -> list[Path]:
    """CSV, MD and PNG beside ``<stem>.jsonl``. Returns the paths written."""
    rows = [r for r in rows if same_sizes(r, header)]
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(paths[0], latest_rows(rows))
    write_atomic(paths[1], markdown(rows, header, env, incomplete=incomplete))
    cpu = " (CPU reference ops)" if env.get("device_type") == "cpu" else ""
    plot(paths[2], rows, f"{env.get('device')}{cpu}, {header.get('dtype')}, preset {header.get('preset')}")
    return paths
