"""How long an MQAR training step took on each device session, and how much of it waited for batches.

    PYTHONPATH=. python3 scripts/mqar_step_times.py [results/mqar/mqar.jsonl ...]
    PYTHONPATH=. python3 scripts/mqar_step_times.py --runs [results/mqar/mqar.jsonl ...]

Groups the finished rows of GPU runs by the commit that ran them (one per device session), length, width, whether
the step was replayed as a CUDA graph and how many runs shared the GPU (``concurrent_runs``, recorded since session
11), and prints milliseconds per step (``elapsed_s / steps_done``: min, median, max) and the share of the run spent
waiting for batches (``data_wait_s``, since session 11). Reads: a step near its cell's kernel time is GPU-bound; a
large wait share means the batch generator bounds it; neither means something else on the host.

``--runs``: one line per run that recorded when it ran (``started_at`` / ``finished_at`` and its GPU in ``env``,
since session 17), with the runs that shared its GPU meanwhile and for what share of its time: two runs share a
GPU's time, so a step's time says as much about the neighbour as about the run (session 16: GKA without gate /
alpha at d = 64 stepped 43 ms at 256 tokens, 33 ms at 512).
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


def gpu_of(row: dict) -> tuple:
    """The physical GPU a row ran on, as far as the row says: its commit (one per device session), the GPUs its
    process saw and the index it used."""
    env = row.get("env", {})
    return env.get("git_sha"), env.get("cuda_visible_devices"), env.get("device_index")


def neighbours_table(paths: list[str]) -> pd.DataFrame:
    """One line per timed GPU run: ms per step and the runs on the same GPU that overlapped it (``mixer dD TT`` and
    the share of this run's time they overlapped, longest first)."""
    rows = [r for p in paths for r in read_rows(p)]
    timed = [
        r for r in rows
        if not r.get("error") and r.get("env", {}).get("device_type") == "cuda" and r.get("steps_done")
        and r.get("started_at") is not None and r.get("finished_at") is not None
    ]  # fmt: skip
    # a run carried from one sweep's file into another's counts once
    timed = list({(gpu_of(r), r["mixer"], r["seq_len"], r["dim"], r["lr"], r["started_at"]): r for r in timed}.values())
    recs = []
    for r in sorted(timed, key=lambda r: (gpu_of(r)[0] or "", r["started_at"])):
        span = max(r["finished_at"] - r["started_at"], 1e-9)
        shared = []
        for o in timed:
            overlap = min(r["finished_at"], o["finished_at"]) - max(r["started_at"], o["started_at"])
            if o is not r and gpu_of(o) == gpu_of(r) and overlap > 0:
                shared.append((overlap / span, f"{o['mixer']} d{o['dim']} T{o['seq_len']}"))
        recs.append({
            "commit": str(gpu_of(r)[0] or "?")[:7],
            "gpu": r["env"].get("cuda_visible_devices") or r["env"].get("device_index"),
            "mixer": r["mixer"], "T": r["seq_len"], "dim": r["dim"], "lr": r["lr"],
            "ms_per_step": round(1000 * r["elapsed_s"] / r["steps_done"], 1),
            "shared_with": ", ".join(f"{name} ({share:.0%})" for share, name in sorted(shared, reverse=True)) or "-",
        })  # fmt: skip
    return pd.DataFrame(recs)


def main() -> None:
    args = sys.argv[1:]
    runs = "--runs" in args
    paths = [a for a in args if a != "--runs"] or ["results/mqar/mqar.jsonl"]
    if runs:
        table = neighbours_table(paths)
        missing = "no GPU rows with started_at / finished_at in " + ", ".join(paths)
        print(table.to_string(index=False) if not table.empty else missing)
        return
    table = step_table(paths)
    if table.empty:
        print("no finished GPU rows in " + ", ".join(paths))
        return
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
