"""``gkabench speed``: build the sweep from the command-line options, run it with a progress bar, write
``<out>/<date>-<gpu>-<tag>.{jsonl,csv,md,png}`` and print the tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as C
from .report import output_stem, tables, write_outputs
from .sweep import SweepAborted, plan, read_rows, run_sweep, same_sweep


@dataclass
class SpeedResult:
    stem: Path
    rows: list[dict]
    paths: list[Path]
    incomplete: str | None
    interrupted: bool


def make_config(
    *,
    device: torch.device,
    mixers: str | None = None,
    levels: str | None = None,
    modes: str | None = None,
    lengths: str | None = None,
    prefill_lengths: str | None = None,
    decode_lengths: str | None = None,
    decode_batches: str | None = None,
    tokens: str | None = None,
    batch: int | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    hidden: int | None = None,
    num_iter: int | None = None,
    dtype: str | None = None,
    preset: str = "matched",
    max_minutes: float | None = None,
    max_call_s: float | None = None,
    rep_ms: float | None = None,
    input_sets: int = 3,
    lift_fla_guard: bool = False,
    tag: str | None = None,
) -> C.SpeedConfig:
    """Options as the CLI takes them (strings for lists); user errors raise one-line ValueErrors."""
    d = C.default_config(device)
    if preset not in C.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose {' or '.join(C.PRESETS)}")
    if batch is not None and tokens is not None:
        raise ValueError("give --tokens (fixed token budget) or --batch (fixed batch), not both")
    for name, v in (("batch", batch), ("heads", heads), ("head-dim", head_dim), ("hidden", hidden), ("num-iter", num_iter)):
        if v is not None and v <= 0:
            raise ValueError(f"--{name} must be positive, got {v}")
    lengths_l = C.parse_lengths(lengths, d["lengths"])
    # --lengths alone sets every mode's lengths, unless a mode's own list is given
    pre_l = C.parse_lengths(prefill_lengths, lengths_l if lengths else d["prefill_lengths"])
    dec_l = C.parse_lengths(decode_lengths, lengths_l if lengths else d["decode_lengths"])
    dec_b = C.parse_lengths(decode_batches, d["decode_batches"])
    H = heads or d["heads"]
    D = head_dim or d["head_dim"]
    hid = hidden or (H * D if (heads or head_dim) else d["hidden"])
    dt = C.parse_dtype(dtype, device)
    cfg = C.SpeedConfig(
        device=str(device), dtype=C.dtype_name(dt), mixers=C.parse_mixers(mixers),
        levels=C.parse_choices(levels, C.LEVELS, "level"), modes=C.parse_choices(modes, C.MODES, "mode"),
        lengths=lengths_l, prefill_lengths=pre_l, decode_lengths=dec_l, decode_batches=dec_b,
        tokens=None if batch is not None else (C.parse_size(tokens) if tokens else d["tokens"]), batch=batch,
        heads=H, head_dim=D, hidden=hid, num_iter=num_iter or d["num_iter"], preset=preset,
        input_sets=max(1, input_sets), warmup_ms=d["warmup_ms"], rep_ms=rep_ms if rep_ms is not None else d["rep_ms"],
        max_call_s=max_call_s if max_call_s is not None else d["max_call_s"], max_minutes=max_minutes,
        min_reps=d["min_reps"],
        lift_fla_guard=lift_fla_guard, tag=tag or preset,
    )  # fmt: skip
    if lift_fla_guard:
        cfg.fla_guard_lifted = lift_guard()
    return cfg


def lift_guard() -> bool:
    """Call the teammate's ``lift_fla_hopper_guard()``; True when it reports (or returns nothing but ran)."""
    try:
        from ..layers.fla_guard import lift_fla_hopper_guard
    except ImportError:
        raise ValueError("--lift-fla-guard needs gkabench/layers/fla_guard.py, which is not in this checkout yet") from None
    result = lift_fla_hopper_guard()
    return True if result is None else bool(result)


def run_speed(cfg: C.SpeedConfig, device: torch.device, out: Path, *, resume: bool = False, console=None) -> SpeedResult:
    from ..env import environment

    env = environment(device)
    stem = output_stem(Path(out), env["device"], cfg.tag, resume=resume)
    jsonl = stem.with_suffix(".jsonl")
    cells = plan(cfg)
    incomplete, interrupted = None, False
    progress = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True)  # fmt: skip
        task = progress.add_task("speed", total=len(cells))
        progress.start()
    state = {"stopped": None}

    def on_cell(cell, row):
        if row is None:
            state["stopped"] = cell
            return
        if progress is not None:
            progress.update(task, advance=1, description=f"{cell.label()}: {row.get('status')}")

    try:
        for _ in run_sweep(cfg, device, jsonl, env, resume=resume, on_cell=on_cell):
            pass
    except KeyboardInterrupt:
        interrupted = True
        incomplete = "interrupted (Ctrl-C); rerun the same command with --resume to finish"
    except SweepAborted as exc:
        incomplete = str(exc)
    finally:
        if progress is not None:
            progress.stop()
    if state["stopped"] is not None:
        incomplete = (f"stopped by --max-minutes {cfg.max_minutes:g} before {state['stopped'].label()}; "
                      "rerun the same command with --resume to go on")  # fmt: skip
    rows = read_rows(jsonl)
    paths = [jsonl]
    if rows:
        paths += write_outputs(stem, rows, cfg.header(), env, incomplete=incomplete)
    return SpeedResult(stem, rows, paths, incomplete, interrupted)


def print_tables(console, rows: list[dict], cfg: C.SpeedConfig) -> None:
    from rich.table import Table

    rows = [r for r in rows if same_sweep(r, cfg)]
    for t in tables(rows):
        table = Table(title=f"{t['title']} ({t['unit']}), preset {cfg.preset}, {cfg.dtype}, {cfg.sizes}", title_justify="left")
        for i, c in enumerate(t["columns"]):
            table.add_column(c, justify="left" if i == 0 else "right")
        for r in t["rows"]:
            table.add_row(*r)
        console.print(table)
