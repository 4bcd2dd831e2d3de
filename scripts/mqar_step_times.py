"""How long an MQAR training step took on each device session, and how much of it waited for batches.

    PYTHONPATH=. python3 scripts/mqar_step_times.py [results/mqar/mqar.jsonl ...]

Groups the finished rows of GPU runs by the commit that ran them (one per device session), length, width, whether
the step was replayed as a CUDA graph and how many runs shared the GPU (``concurrent_runs``, recorded since session
11), and prints milliseconds per step (``elapsed_s / steps_done``: min, median, max) and the share of the run spent
waiting for batches (``data_wait_s``, since session 11). Reads: a step near its cell's kernel time is GPU-bound; a
large wait share means the batch generator bounds it; neither means something else on the host.
"""

from __future__ import annotations

import sys

import pandas as pd

from gkabench.tasks.mqar_sweep import read_rows
from gkabench.train_graph import graphed


def step_table(paths: list[str]) -> pd.DataFrame:
    rows = [r for p in paths for r in read_rows(p)]
    recs = []
    for r in rows:
        env = r.get("env", {})
        if r.get("error") or env.get("device_type") != "cuda" or not r.get("elapsed_s") or not r.get("steps_done"):
            continue
        wait = r.get("data_wait_s")
        recs.append({
            "commit": str(env.get("git_sha", "?"))[:7], "T": r["seq_len"], "dim": r["dim"], "heads": r.get("num_heads"),
            "graph": graphed(r), "jobs": r.get("concurrent_runs"),
            "mixer": r["mixer"], "lr": r["lr"], "elapsed_s": r["elapsed_s"],
            "ms_per_step": 1000 * r["elapsed_s"] / r["steps_done"],
            "wait_share": None if wait is None else wait / r["elapsed_s"],
        })  # fmt: skip
    if not recs:
        return pd.DataFrame()
    # a run carried from one sweep's file into another's (session 9's d = 128 rows) counts once
    df = pd.DataFrame(recs).drop_duplicates(["commit", "T", "dim", "heads", "mixer", "lr", "elapsed_s"])
    keys = ["commit", "T", "dim", "heads", "graph", "jobs"]
    out = df.groupby(keys, dropna=False).agg(
        runs=("ms_per_step", "size"), ms_min=("ms_per_step", "min"), ms_median=("ms_per_step", "median"),
        ms_max=("ms_per_step", "max"), wait_share=("wait_share", "median"),
    )  # fmt: skip
    return out.round(3).reset_index()


def main() -> None:
    paths = sys.argv[1:] or ["results/mqar/mqar.jsonl"]
    table = step_table(paths)
    if table.empty:
        print("no finished GPU rows in " + ", ".join(paths))
        return
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
