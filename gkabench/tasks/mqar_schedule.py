"""When an MQAR sweep may start its next run: a deadline that only runs expected to finish before it may start.

A sweep left running in the background of a lent machine (``scripts/mqar_device_bg.sh``) must be done by the time
the machine goes back; a run still in flight then is lost with all its GPU time. A fixed "start nothing after
minute X" either loses runs (X too late for a long run) or leaves the GPU idle (X too early for a short one).
Instead the sweep reads a deadline (a Unix time, written into ``--deadline-file`` by whoever knows when the
machine goes) and estimates each run's duration from the rows already finished on the same kind of machine:
a run that does not fit is passed over, and a shorter one later in the order may still start.

    fits = DeadlineGate(path, jsonl, device)   # fits(run) -> bool, re-reading both files each time
"""

from __future__ import annotations

import time
from pathlib import Path

# An estimate is the longest comparable run so far times this, plus a few seconds for the worker's start.
ESTIMATE_MARGIN = 1.1
ESTIMATE_EXTRA_S = 10.0
# A run one length up from the same mixer and dim: this much over the length ratio (1024 / 512 tokens on the H200
# not measured yet when this was set; a run cut by the machine's return loses all its time, so err long).
LONGER_FACTOR = 1.25


def run_seconds(row: dict, steps: int | None = None) -> float | None:
    """A finished row's duration as if it had trained every step (early stops scaled up): conservative. ``steps``:
    the duration of that many steps at the row's pace instead (a run of another length of training)."""
    elapsed, done, planned = row.get("elapsed_s"), row.get("steps_done"), row.get("steps")
    if row.get("error") or not elapsed:
        return None
    seconds = float(elapsed) * (planned / done if done and planned and done < planned else 1.0)
    return seconds * (steps / planned if steps and planned else 1.0)


def same_machine(env: dict, device: dict) -> bool:
    """Rows from this kind of machine: the same GPU model on CUDA; any CPU on CPU (its name carries a thread count)."""
    if env.get("device_type") != device.get("device_type"):
        return False
    return device.get("device_type") != "cuda" or env.get("device") == device.get("device")


def estimate_run_seconds(run: dict, rows: list[dict], device: dict, typical: bool = False) -> float | None:
    """Seconds ``run`` (a sweep run: mixer, dim, seq_len, ...) is expected to take on ``device`` (an ``environment()``
    dict), from finished ``rows``: the longest one of the same mixer, dim and seq_len; else of the same base mixer
    there (a variant such as ``attention_zoology`` or ``gka_plain`` runs its base's kernels); else the longest of any
    mixer at that dim and seq_len; else the longest at that seq_len (any dim) x 1.25; else, at the nearest shorter
    seq_len, the longest of the same mixer and dim scaled by the length ratio x LONGER_FACTOR, or the longest of
    any run there scaled by the length ratio. Every step counted (an early stop is not assumed), times
    ESTIMATE_MARGIN plus ESTIMATE_EXTRA_S; rows of another step count are scaled to the run's ``steps`` (a
    12000-step side sweep is timed from the grid's 3000-step rows). None when no row from this kind of machine
    exists.

    ``typical=True``: the median instead of the longest, with no margin or LONGER_FACTOR (for planning, not for
    deadlines).
    Graphed and eager rows count alike: in the sweep (two runs sharing a GPU) graphed steps were no faster (H200,
    sessions 11-12)."""
    import statistics

    pick = statistics.median if typical else max
    margin, extra = (1.0, 0.0) if typical else (ESTIMATE_MARGIN, ESTIMATE_EXTRA_S)
    steps = run.get("steps")
    timed = [(r, s) for r in rows if same_machine(r.get("env", {}), device) and (s := run_seconds(r, steps)) is not None]
    from .mqar_sweep import base_mixer

    T, dim = run["seq_len"], run["dim"]
    base = base_mixer(run["mixer"])
    tiers = [
        (lambda r: r["seq_len"] == T and r["dim"] == dim and r["mixer"] == run["mixer"], 1.0),
        (lambda r: r["seq_len"] == T and r["dim"] == dim and base_mixer(r["mixer"]) == base, 1.0),
        (lambda r: r["seq_len"] == T and r["dim"] == dim, 1.0),
        (lambda r: r["seq_len"] == T, 1.25),
    ]
    for match, factor in tiers:
        found = [s for r, s in timed if match(r)]
        if found:
            return margin * factor * pick(found) + extra
    shorter = [r["seq_len"] for r, _ in timed if r["seq_len"] < T]
    if shorter:
        near = max(shorter)
        at_near = [(r, s) for r, s in timed if r["seq_len"] == near]
        # the same mixer and dim one length down, scaled by the length ratio and LONGER_FACTOR for what grows faster
        # than the length (attention's scores); else any run one length down, the longest, scaled by the ratio
        same = [s for r, s in at_near if r["dim"] == dim and r["mixer"] == run["mixer"]]
        if same:
            return margin * (1.0 if typical else LONGER_FACTOR) * (T / near) * pick(same) + extra
        return margin * (T / near) * pick([s for _, s in at_near]) + extra
    return None


def other_sweeps_rows(jsonl) -> list[dict]:
    """Rows of every other sweep (``*.jsonl``) in ``jsonl``'s folder: a side sweep with no finished run of its own
    is timed from the grid's rows (see :func:`estimate_or_fallback`)."""
    from .mqar_sweep import read_rows

    jsonl = Path(jsonl)
    return [r for p in sorted(jsonl.parent.glob("*.jsonl")) if p.name != jsonl.name for r in read_rows(p)]


def estimate_or_fallback(run: dict, rows: list[dict], others: list[dict], device: dict, typical: bool = False) -> float | None:
    """:func:`estimate_run_seconds` from this sweep's ``rows``; when they give none, from ``others`` (other sweeps'
    rows) of the run's batch size, the one setting besides steps (scaled) that changes a step's time by much."""
    est = estimate_run_seconds(run, rows, device, typical)
    if est is None and others:
        same_batch = [r for r in others if r.get("batch_size") == run.get("batch_size")]
        est = estimate_run_seconds(run, same_batch, device, typical)
    return est


def planned_seconds(runs: list[dict], rows: list[dict], others: list[dict] = ()) -> tuple[str, float, int] | None:
    """(GPU model, summed typical seconds, runs with no estimate) for ``runs`` on the GPU model most rows ran on
    (this sweep's ``rows``, else ``others``: see :func:`estimate_or_fallback`); None when no row ran on a GPU. The
    rows' times are those of runs sharing a GPU as they did then (2 at a time on the H200 since session 7), so
    wall time is about the sum divided by that count."""
    from collections import Counter

    others = list(others)
    gpus = Counter(r.get("env", {}).get("device") for r in (rows or others) if r.get("env", {}).get("device_type") == "cuda")
    if not gpus:
        return None
    device = {"device": gpus.most_common(1)[0][0], "device_type": "cuda"}
    est = [estimate_or_fallback(run, rows, others, device, typical=True) for run in runs]
    return device["device"], sum(e for e in est if e is not None), sum(e is None for e in est)


def read_deadline(path) -> float | None:
    """The Unix time in ``path``; None while the file does not exist. A file that cannot be read as a number (e.g.
    written by hand as a bare stop signal) is a deadline of now: nothing more starts."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        return float(p.read_text().strip())
    except (OSError, ValueError):
        return time.time()


class DeadlineGate:
    """``gate(run)``: True while no deadline is set, or when the run's estimate fits before it. A run with no
    estimate (nothing finished on this kind of machine, in this sweep or the other sweeps of its folder) does not
    start once a deadline is set."""

    def __init__(self, deadline_file, jsonl, device: dict, log=print):
        self.deadline_file, self.jsonl, self.device, self.log = deadline_file, Path(jsonl), device, log

    def __call__(self, run: dict) -> bool:
        if self.deadline_file is None or (deadline := read_deadline(self.deadline_file)) is None:
            return True
        from .mqar_sweep import read_rows

        left = deadline - time.time()
        need = estimate_or_fallback(run, read_rows(self.jsonl), other_sweeps_rows(self.jsonl), self.device)
        if need is not None and need <= left:
            return True
        what = f"{run['mixer']} d={run['dim']} T={run['seq_len']} lr={run['lr']:g}"
        need_text = "no finished run on this machine to estimate it from" if need is None else f"needs ~{need:.0f} s"
        self.log(f"not started before the deadline: {what} ({need_text}, {max(left, 0):.0f} s left)", flush=True)
        return False
