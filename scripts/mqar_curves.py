"""Training curves of the MQAR sweep's best runs, from the training logs the device calls brought back.

    python3 scripts/mqar_curves.py                      # every results/device/**/*mqar_logs*.tgz
    python3 scripts/mqar_curves.py A.tgz B.tgz --rows results/mqar/mqar.jsonl --out results/mqar/mqar_curves
    python3 scripts/mqar_curves.py --rows results/mqar/mqar_fixed_heads.jsonl --out results/mqar/mqar_fixed_heads_curves

Why: a cell's best accuracy alone does not say whether a layer cannot recall the pairs or had not yet started
learning when the step budget ended. MQAR training sits on a plateau (loss ~ ln of the number of values, guessing
among them) until the layer finds the lookup, then drops; the step where it leaves the plateau says which.

For every cell of the rows file (mixer, length, pairs, model dim) the run of its best learning rate is looked up in
the archives (a run's log is ``<tag>/log.jsonl``, its config in the ``start`` event; of several copies the one that
got furthest is used) and its training loss drawn against the step: one panel per (length, pairs, dim), one line
per mixer. ``OUT.png`` and ``OUT.csv`` (best lr, accuracy, first step under the plateau, final training loss).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import tarfile
from pathlib import Path

# the plateau is ln(values) ~ 8.3 with the sweep's vocab 8192; a run has left it once its loss is clearly below
PLATEAU_MARGIN = 0.8


def _preset_heads() -> int:
    from gkabench.models.presets import PRESETS

    return PRESETS["tiny"]["num_heads"]


PRESET_HEADS = _preset_heads()


def read_logs(archives: list[str]) -> dict[tuple, list[dict]]:
    """(mixer tag, hidden, heads, seq_len, pairs, lr, batch, steps, curriculum, seed) -> the log's events, furthest
    copy kept."""
    logs: dict[tuple, tuple[int, list[dict]]] = {}  # key -> (last step, events)
    for path in archives:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if not m.name.endswith("log.jsonl"):
                    continue
                lines = tar.extractfile(m).read().decode().splitlines()
                events = [json.loads(line) for line in lines if line.strip()]
                start = next((e for e in events if e.get("event") == "start"), None)
                if start is None:
                    continue
                c = start["config"]
                named = re.match(r"(.+)_d\d+_T\d+_P\d+_lr", Path(m.name).parent.name)  # <mixer>_d<dim>_T<len>_P<pairs>_lr<lr>
                if named is None:
                    continue
                tag = named.group(1)  # the sweep's mixer name (variants such as gka_plain)
                # heads: logs before session 9 have none (the tiny preset's, fixed at every dim)
                heads = c.get("num_heads") or PRESET_HEADS
                key = (tag, c["hidden_size"], heads, c["seq_len"], c["mqar_pairs"], c["lr"], c["batch_size"], c["steps"], c.get("mqar_curriculum"), c.get("seed") or 0)
                last = max((e.get("step", 0) for e in events), default=0)
                if key not in logs or last > logs[key][0]:
                    logs[key] = (last, events)
    return {key: events for key, (_, events) in logs.items()}


def best_rows(rows_path: str, lrs: list[float] | None = None) -> list[dict]:
    """Each cell's best-lr row (the first seed's), among the rows at ``lrs`` (None: every lr in the file)."""
    from gkabench.tasks.mqar_sweep import read_rows
    from gkabench.tasks.mqar_tables import best_per_cell

    rows = [r for r in read_rows(rows_path) if not r.get("error") and (lrs is None or any(math.isclose(r["lr"], x) for x in lrs))]
    best = best_per_cell(rows)
    # one run per cell: the first seed's at the chosen lr (the run the lr was chosen on)
    full = {(r["mixer"], r["seq_len"], r["num_pairs"], r["dim"], r["lr"]): r for r in sorted(rows, key=lambda r: -(r.get("seed") or 0))}
    return [full[(b.mixer, b.seq_len, b.num_pairs, b.dim, b.lr)] for b in best.itertuples()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archives", nargs="*")
    ap.add_argument("--rows", default="results/mqar/mqar.jsonl")
    ap.add_argument("--out", default="results/mqar/mqar_curves", help="writes OUT.png and OUT.csv")
    ap.add_argument("--lrs", default="grid", help="learning rates a cell's best run is chosen among: grid = the GPU grid's "
                    "(as its table: an off-grid side run, e.g. lr 3e-4, is left out), all, or a comma list")
    a = ap.parse_args()
    if a.lrs == "grid":
        from gkabench.tasks.mqar_sweep import SweepConfig

        lrs = SweepConfig.defaults_for(True).lrs
    else:
        lrs = None if a.lrs == "all" else [float(x) for x in a.lrs.split(",")]
    archives = a.archives or sorted(glob.glob("results/device/**/*mqar_logs*.tgz", recursive=True))
    logs = read_logs(archives)
    table = []
    for r in best_rows(a.rows, lrs):
        key = (r["mixer"], r["dim"], r.get("num_heads") or PRESET_HEADS, r["seq_len"], r["num_pairs"], r["lr"], r["batch_size"], r["steps"], r.get("curriculum"), r.get("seed") or 0)
        events = logs.get(key)
        train = [(e["step"], e["loss"]) for e in events or [] if "loss" in e and "step" in e and "event" not in e]
        plateau = math.log(r["vocab_size"] // 2)  # values come from half the vocabulary
        exit_step = next((s for s, loss in train if loss < plateau - PLATEAU_MARGIN), None)
        table.append({"mixer": r["mixer"], "seq_len": r["seq_len"], "pairs": r["num_pairs"], "dim": r["dim"], "lr": r["lr"],
                      "accuracy": r["accuracy"], "steps_done": r.get("steps_done"), "left_plateau_at": exit_step,
                      "final_train_loss": train[-1][1] if train else None, "curve": train})  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gkabench.io import save_figure_atomic, write_text_atomic
    from gkabench.report.render import write_csv_rows

    panels = sorted({(t["seq_len"], t["pairs"], t["dim"]) for t in table})
    lengths = sorted({(T, P) for T, P, _ in panels})
    dims = sorted({d for _, _, d in panels})
    fig, axes = plt.subplots(len(lengths), len(dims), figsize=(4.2 * len(dims), 3.2 * len(lengths)), squeeze=False, sharey=True)
    colors = {m: f"C{i % 10}" for i, m in enumerate(sorted({t["mixer"] for t in table}))}
    for i, (T, P) in enumerate(lengths):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for t in table:
                if (t["seq_len"], t["pairs"], t["dim"]) == (T, P, d) and t["curve"]:
                    steps, losses = zip(*t["curve"])
                    ax.plot(steps, losses, color=colors[t["mixer"]], label=f"{t['mixer']} ({t['lr']:g}, acc {t['accuracy']:.2f})")
            ax.set_title(f"T={T}, {P} pairs, d={d}", fontsize=9)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "no run yet", ha="center", va="center", transform=ax.transAxes, color="gray")
            if i == len(lengths) - 1:
                ax.set_xlabel("step")
        axes[i][0].set_ylabel("training loss")
    fig.suptitle("MQAR: training loss of each cell's best-lr run (plateau ~ ln 4096 = 8.3 until the lookup is found)", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, a.out + ".png", dpi=110)
    cols = ["mixer", "seq_len", "pairs", "dim", "lr", "accuracy", "steps_done", "left_plateau_at", "final_train_loss"]
    write_text_atomic(a.out + ".csv", write_csv_rows(cols, [{c: t[c] for c in cols} for t in table]))
    missing = [t for t in table if not t["curve"]]
    print(f"{len(table)} cells, {len(table) - len(missing)} with a training log ({len(archives)} archives) -> {a.out}.png / .csv")
    for t in missing:
        print(f"  no log: {t['mixer']} T={t['seq_len']} P={t['pairs']} d={t['dim']} lr={t['lr']:g}")


if __name__ == "__main__":
    main()
