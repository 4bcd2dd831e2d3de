"""The MQAR sweep's tables and plot: best accuracy over learning rates per (mixer, length, pairs, model dim), as
markdown (one table per length, what has not run listed at the end) and as a PNG (accuracy vs model dim, one line
per mixer, one panel per length). Rows are those of :mod:`gkabench.tasks.mqar_sweep`'s JSONL."""

from __future__ import annotations

from ..io import save_figure_atomic, write_text_atomic


CELL = ["mixer", "seq_len", "num_pairs", "dim"]


def best_per_cell(rows: list[dict]):
    """DataFrame with one row per cell (mixer, seq_len, num_pairs, dim): the best learning rate and its accuracy.

    With one seed per run (the default grid) that is the best accuracy over the lrs. With several seeds the lr is
    chosen on the cell's first seed alone (the one every lr ran with), and ``accuracy`` is the mean over every seed
    run at that lr, with ``acc_min`` / ``acc_max`` and ``seeds``: choosing the lr on the same runs that are averaged
    would favour lrs whose one lucky seed ran. ``lrs_tried``: lrs with a finished run in the cell."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if not r.get("error")])
    if df.empty:
        return df
    if "seed" not in df:
        df["seed"] = 0
    df["seed"] = df["seed"].fillna(0).astype(int)
    first = df[df["seed"] == df.groupby(CELL)["seed"].transform("min")]
    chosen = first.loc[first.groupby(CELL)["accuracy"].idxmax(), [*CELL, "lr"]]
    at_lr = df.merge(chosen, on=[*CELL, "lr"])
    stats = at_lr.groupby([*CELL, "lr"])["accuracy"].agg(accuracy="mean", acc_min="min", acc_max="max", seeds="count").reset_index()
    tried = df.groupby(CELL)["lr"].nunique().rename("lrs_tried").reset_index()
    return stats.merge(tried, on=CELL).sort_values(["seq_len", "mixer", "dim"]).reset_index(drop=True)


def cell_text(r) -> str:
    """``"0.622 (0.01)"``; with several seeds ``"0.450 [0.10-0.62, 3 seeds] (0.01)"`` (mean [min-max])."""
    spread = f" [{r.acc_min:.2f}-{r.acc_max:.2f}, {r.seeds} seeds]" if getattr(r, "seeds", 1) > 1 else ""
    return f"{r.accuracy:.3f}{spread} ({r.lr:g})"


def write_markdown(rows: list[dict], path, title: str, missing: list[dict] | None = None, seed_rows: list[dict] | None = None) -> None:
    """One table per (seq_len, pairs): rows = mixers, columns = model dims, cells = best accuracy (its lr).

    ``missing``: the sweep's runs with no finished row yet, listed at the end so a partial sweep says what it lacks;
    a cell some of whose learning rates have not run is marked with a dagger. ``seed_rows``: finished runs of the
    same cells under other seeds (``mqar_sweep.other_seed_rows``), shown in a section of their own per seed
    (:func:`seed_lines`) so the tables above stay one seed's best over the lrs.
    """
    best = best_per_cell(rows)
    partial = incomplete_cells(missing)
    lines = [f"# {title}", ""]
    if rows:
        r0 = rows[0]
        lines += [
            f"2-layer models, vocab {r0['vocab_size']}, {r0['steps']} steps x batch {r0['batch_size']}"
            + (", trained on Zoology's mixture of pair counts P/16..P (weights 5:1:1:1:1), evaluated on P" if r0.get("curriculum") else ", trained on P pairs only")
            + (f" (a run ends early once its eval accuracy reaches {r0['early_stop_acc']:g})" if r0.get("early_stop_acc") else "")
            + ", "
            f"best accuracy over the learning rates tried (in parentheses: that lr). Accuracy on "
            f"{r0.get('eval_examples', '?')} fresh examples per run."
            + (" Cells with several seeds: the lr is chosen on the first seed, then mean [min-max] over the seeds run at it."
               if not best.empty and (best["seeds"] > 1).any() else ""),
            "",
            environment_summary(rows),
            "",
        ]
        options = {r["mixer"]: r["options"] for r in rows if r.get("options")}
        if options:
            lines += ["Layer options: " + "; ".join(f"{m} {o}" for m, o in sorted(options.items())) + ".", ""]
    for (T, P), sub in best.groupby(["seq_len", "num_pairs"]) if not best.empty else []:
        dims = sorted(sub["dim"].unique())
        lines += [f"## seq_len {T}, {P} pairs", "", "| mixer | " + " | ".join(f"d={d}" for d in dims) + " |",
                  "|---|" + "---|" * len(dims)]  # fmt: skip
        for mixer, m in sub.groupby("mixer", sort=False):
            cells = []
            for dd in dims:
                r = m[m["dim"] == dd]
                mark = " †" if (mixer, T, P, dd) in partial else ""
                cells.append(cell_text(next(r.itertuples())) + mark if len(r) else "-")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
        if any((mx, T, P, dd) in partial for mx in sub["mixer"] for dd in dims):
            lines += ["† not every learning rate of the sweep has run in this cell yet (listed at the end).", ""]
    lines += seed_lines(rows, seed_rows or [])
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["## Failed runs (left out above; a rerun tries them again)", ""]
        lines += [f"- {r['mixer']} d={r['dim']} T={r['seq_len']} P={r['num_pairs']} lr={r['lr']:g}: {r['error']}" for r in failed]
        lines.append("")
    if missing:
        lines += [f"## Not run yet: {len(missing)} runs of this sweep (the cells above are the best over the lrs that ran)", ""]
        lines += [f"- {line}" for line in missing_summary(missing)]
        lines.append("")
    write_text_atomic(path, "\n".join(lines) + "\n")


def seed_spread(rows: list[dict], seed_rows: list[dict]):
    """Per cell of ``rows`` with runs in ``seed_rows``: the lr the tables chose (on ``rows``' first seed), the
    accuracy of every seed at that lr (seed order) and ``others``: seed rows at another lr (the best lr moved after
    they ran), as (lr, seed, accuracy). Dict (mixer, seq_len, num_pairs, dim) -> (lr, [(seed, acc)], others)."""
    best = best_per_cell(rows)
    if best.empty or not seed_rows:
        return {}
    chosen = {(r.mixer, r.seq_len, r.num_pairs, r.dim): r.lr for r in best.itertuples()}
    extra, seeded = {id(r) for r in seed_rows}, rows_cells(seed_rows)
    out: dict = {}
    for r in sorted((r for r in rows + seed_rows if not r.get("error")), key=lambda r: r.get("seed") or 0):
        key = cell_of(r)
        if key in chosen:
            lr, at_lr, others = out.setdefault(key, (chosen[key], [], []))
            if r["lr"] == lr:
                at_lr.append((r.get("seed") or 0, r["accuracy"]))
            elif id(r) in extra:
                others.append((r["lr"], r.get("seed") or 0, r["accuracy"]))
    return {k: v for k, v in out.items() if k in seeded}


def seed_lines(rows: list[dict], seed_rows: list[dict]) -> list[str]:
    """Markdown section: cells that also ran other seeds, each seed's accuracy at the table's lr and their mean.

    The lr stays the one chosen on the first seed: choosing it on the averaged runs would favour an lr whose one
    lucky seed ran. A cell reads e.g. ``0.835 / 0.001 / 0.000 (mean 0.279, lr 0.001)``: seeds 0, 1, 2 in order
    (``s0 0.470 / s2 0.000 ...`` where a cell ran only some of them)."""
    spread = seed_spread(rows, seed_rows)
    if not spread:
        return []
    seeds = sorted({s for _, at_lr, _ in spread.values() for s, _ in at_lr})
    lines = [
        f"## More seeds: accuracy per seed ({', '.join(map(str, seeds))}) at each cell's lr above, then their mean",
        "",
        "The tables above are one seed's best over the lrs. These cells also trained other seeds at that lr (`--lrs best"
        " --seeds ...`); when a run leaves the loss plateau is chaotic, so a cell whose seeds disagree reads \"learned"
        " by some seeds\", and its mean is the fairer number to compare. '-': no other seed ran.",
        "",
    ]
    for (T, P) in sorted({(k[1], k[2]) for k in spread}):
        cells = {k: v for k, v in spread.items() if (k[1], k[2]) == (T, P)}
        dims = sorted({k[3] for k in rows_cells(rows) if (k[1], k[2]) == (T, P)})
        lines += [f"### seq_len {T}, {P} pairs", "", "| mixer | " + " | ".join(f"d={d}" for d in dims) + " |",
                  "|---|" + "---|" * len(dims)]  # fmt: skip
        for mixer in sorted({k[0] for k in cells}):
            texts = []
            for d in dims:
                lr, at_lr, others = cells.get((mixer, T, P, d), (None, [], []))
                accs = [a for _, a in at_lr]
                # seeds named where the cell ran a subset of the header's (a sweep cut by its deadline)
                named = [s for s, _ in at_lr] != seeds
                each = " / ".join(f"{f's{s} ' if named else ''}{a:.3f}" for s, a in at_lr)
                text = f"{each} (mean {sum(accs) / len(accs):.3f}, lr {lr:g})" if len(accs) > 1 else "-"
                if others:
                    text += "; at " + ", ".join(f"lr {o_lr:g} seed {o_s}: {o_a:.3f}" for o_lr, o_s, o_a in others)
                texts.append(text)
            lines.append(f"| {mixer} | " + " | ".join(texts) + " |")
        lines.append("")
    return lines


def cell_of(row: dict) -> tuple:
    """The table cell of a row or run: (mixer, seq_len, num_pairs, dim)."""
    return tuple(row[k] for k in CELL)


def rows_cells(rows: list[dict]) -> set:
    """The cells (:func:`cell_of`) of every row."""
    return {cell_of(r) for r in rows}


def environment_summary(rows: list[dict]) -> str:
    """One line on where the rows ran, counted over all of them (a sweep accumulates over sessions and commits):
    devices, torch versions, commits, whether fla's Hopper guard was lifted, eager or compiled norms / gates."""
    from collections import Counter

    def counted(values) -> str:
        c = Counter(values)
        return ", ".join(f"{v} ({n})" for v, n in c.most_common()) if len(c) > 1 else f"{next(iter(c))} (all {len(rows)})"

    env = [r.get("env", {}) for r in rows]
    commits = sorted({e.get("code_hash") or "?" for e in env})
    return (
        f"Environment (runs in parentheses): {counted(e.get('device') for e in env)}; torch {counted(e.get('torch') for e in env)}; "
        f"fla guard lifted: {counted('yes' if r.get('fla_guard_lifted') else 'no' for r in rows)}; "
        f"norms / gates: {counted(r.get('elementwise', 'eager') for r in rows)}; {len(commits)} code version(s) "
        f"(each row's git sha, code hash and command are in the JSONL); last command: `{env[-1].get('command')}`."
    )


def missing_summary(missing: list[dict]) -> list[str]:
    """Runs not finished yet, one line per (seq_len, pairs, lr): ``"T=512 P=128 lr=0.001: all 21 (every mixer and dim)"``
    or ``"T=256 P=64 lr=0.001: gla d=64, mesanet d=64"``."""
    groups: dict = {}
    for r in missing:
        seed = f" seed {r['seed']}" if r.get("seed") else ""
        groups.setdefault((r["seq_len"], r["num_pairs"], r["lr"]), []).append(f"{r['mixer']} d={r['dim']}{seed}")
    n_mixers, n_dims = len({r["mixer"] for r in missing}), len({r["dim"] for r in missing})
    return [
        f"T={T} P={P} lr={lr:g}: " + (f"all {len(what)} (every mixer and dim)" if len(what) == n_mixers * n_dims and len(what) > 3 else ", ".join(what))
        for (T, P, lr), what in sorted(groups.items())
    ]


def incomplete_cells(missing: list[dict] | None) -> set:
    """(mixer, seq_len, num_pairs, dim) of every cell with a run not yet finished."""
    return rows_cells(missing or [])


def write_plot(rows: list[dict], path, title: str, missing: list[dict] | None = None, seed_rows: list[dict] | None = None) -> None:
    """Accuracy vs model dim, one line per mixer, one panel per (seq_len, pairs); hollow markers: cells where some
    learning rates of the sweep (``missing``) have not run yet; vertical bars: the range over every seed at the
    cell's lr where ``seed_rows`` (other seeds of the same cells) has runs, the marker staying on ``rows``' value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    best = best_per_cell(rows)
    if best.empty:
        return
    partial = incomplete_cells(missing)
    per_seed = seed_spread(rows, seed_rows or [])
    # one colour per mixer in every panel (explicit: the hollow markers must not advance matplotlib's colour cycle)
    colors = {m: f"C{i % 10}" for i, m in enumerate(sorted(best["mixer"].unique()))}
    panels = sorted({(int(t), int(p)) for t, p in zip(best["seq_len"], best["num_pairs"])})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.3, 3.6), squeeze=False, sharey=True)
    for ax, (T, P) in zip(axes[0], panels):
        sub = best[(best["seq_len"] == T) & (best["num_pairs"] == P)]
        for mixer, m in sub.groupby("mixer"):
            m = m.sort_values("dim")
            ax.plot(m["dim"], m["accuracy"], marker="o", label=mixer, color=colors[mixer])
            many = m[m["seeds"] > 1]
            if len(many):  # min-max over the seeds at the chosen lr
                spread = [many["accuracy"] - many["acc_min"], many["acc_max"] - many["accuracy"]]
                ax.errorbar(many["dim"], many["accuracy"], yerr=spread, linestyle="none", capsize=3, color=colors[mixer])
            ranges = [(d, min(a for _, a in at_lr), max(a for _, a in at_lr)) for (mx, t, p, d), (_, at_lr, _) in per_seed.items()
                      if (mx, t, p) == (mixer, T, P) and len(at_lr) > 1]  # fmt: skip
            if ranges:  # other seeds at the same lr: how far one seed's value is from settled
                # side by side around the dim (a small step on the log2 axis per mixer), or they hide each other
                shift = 2 ** (0.03 * (list(colors).index(mixer) - (len(colors) - 1) / 2))
                xs = [d * shift for d, _, _ in ranges]
                ax.vlines(xs, [lo for _, lo, _ in ranges], [hi for _, _, hi in ranges], color=colors[mixer], alpha=0.6, linewidth=2.5)
            part = [(d, a) for d, a in zip(m["dim"], m["accuracy"]) if (mixer, T, P, d) in partial]
            if part:  # hollow: the cell's best may still change
                ax.plot(*zip(*part), linestyle="none", marker="o", markerfacecolor="white", markeredgecolor=colors[mixer])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sub["dim"].unique()), [str(d) for d in sorted(sub["dim"].unique())])
        ax.set_title(f"seq_len {T}, {P} pairs")
        ax.set_xlabel("model dim")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (best lr)")
    # one legend for the figure, naming every mixer: a panel may lack some (a length not run for them yet)
    handles = [Line2D([], [], marker="o", color=c, label=m) for m, c in colors.items()]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    notes = [*(["hollow: not every lr has run yet"] if partial else []), *(["bars: range over seeds at that lr"] if per_seed else [])]
    fig.suptitle(title + (f"  ({'; '.join(notes)})" if notes else ""))
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    save_figure_atomic(fig, path, dpi=120)
