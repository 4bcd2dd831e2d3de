"""The sweep loop of ``gkabench speed``: one row per cell, appended to JSONL as soon as it is measured.

A cell is (level, mode, mixer, T[, decode batch]). An OOM, a kernel failure or a missing kernel is recorded in
that cell's ``status`` and the sweep goes on; one call slower than ``max_call_s`` marks the cell ``slow`` and skips
the longer lengths of that series; ``max_minutes`` stops the sweep between cells (rerun with ``resume`` to go on);
Ctrl-C stops it with every finished row already on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .cases import build_case
from .config import SpeedConfig
from .timing import peak_memory_of, time_fn

DONE_STATUSES = ("ok", "oom", "slow", "skipped", "crash")  # resume skips these; errors are retried
# errors after which the CUDA context is unusable: the sweep stops (a fresh process with --resume goes on)
FATAL_MARKERS = ("illegal memory access", "unspecified launch failure", "device-side assert", "misaligned address",
                 "illegal instruction", "cuda error: an illegal")  # fmt: skip


class SweepAborted(RuntimeError):
    """A cell broke the CUDA context; the rows so far are on disk."""


@dataclass(frozen=True)
class Cell:
    level: str
    mode: str
    mixer: str
    T: int
    decode_batch: int | None = None

    @property
    def key(self) -> tuple:
        return (self.level, self.mode, self.mixer, self.T, self.decode_batch)

    @property
    def series(self) -> tuple:  # cells whose cost grows with T together
        return (self.level, self.mode, self.mixer, self.decode_batch)

    def label(self) -> str:
        b = f" b={self.decode_batch}" if self.decode_batch else ""
        return f"{self.level} {self.mode} {self.mixer} T={self.T}{b}"


def plan(cfg: SpeedConfig) -> list[Cell]:
    cells = []
    for level in cfg.levels:
        for mode in cfg.modes:
            for mixer in cfg.mixers:
                for T in cfg.lengths_for(mode):
                    if mode == "decode":
                        cells += [Cell(level, mode, mixer, T, b) for b in cfg.decode_batches]
                    else:
                        cells.append(Cell(level, mode, mixer, T))
    return cells


def row_key(row: dict) -> tuple:
    return (row.get("level"), row.get("mode"), row.get("mixer"), row.get("T"), row.get("decode_batch"))


def same_sweep(row: dict, cfg: SpeedConfig) -> bool:
    """Whether ``row`` was measured at ``cfg``'s preset, dtype and sizes (heads, head dim, hidden, token budget or
    batch, GKA num_iter): only such rows count as done on resume. Rows written before rows carried ``sizes`` do
    not match, so their cells are measured again."""
    return row.get("preset") == cfg.preset and row.get("dtype") == cfg.dtype and row.get("sizes") == cfg.sizes


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is ignored."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def same_code(row: dict) -> bool:
    """Whether ``row`` measured the code a cell would run now (see :mod:`gkabench.bench.fingerprint`); rows
    without a ``code`` field (written before rows carried it) count as stale."""
    from .fingerprint import code_fingerprint

    try:
        return row.get("code") == code_fingerprint(row.get("mixer"), row.get("level"))
    except Exception:  # noqa: BLE001 - a mixer no longer registered: nothing to match
        return False


def done_keys(rows: list[dict], cfg: SpeedConfig) -> set[tuple]:
    return {
        row_key(r) for r in rows
        if same_sweep(r, cfg) and same_code(r) and str(r.get("status", "")).split(":")[0] in DONE_STATUSES
    }  # fmt: skip


def _status_of(exc: BaseException) -> str:
    from .ops import CellUnavailable

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    if any(m in str(exc).lower() for m in FATAL_MARKERS):
        return f"crash: {type(exc).__name__}: {msg}"
    if isinstance(exc, CellUnavailable):
        return f"skipped: {msg}"
    return f"error: {type(exc).__name__}: {msg}"


def _guard_active() -> bool | None:
    """Whether fla's Hopper gated-backward guard would refuse here (None when it cannot be told)."""
    try:
        from ..layers.fla_guard import hopper_guard_active

        return bool(hopper_guard_active())
    except Exception:  # noqa: BLE001 - a missing / changed helper must not stop the sweep
        return None


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn, device, grad_to_none) -> float:
    for t in grad_to_none:
        t.grad = None
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def measure(cfg: SpeedConfig, cell: Cell, device) -> dict:
    """Measure one cell; never raises except KeyboardInterrupt. Returns the row's measured fields."""
    out: dict = {"status": "ok"}
    try:
        case = build_case(cfg, cell.level, cell.mode, cell.mixer, cell.T, cell.decode_batch, device)
        out.update(case.info, batch=case.batch, tokens=case.tokens, state_bytes=case.state_bytes)
        first = _timed_call(case.fn, device, case.grad_to_none)  # warm-up; on CUDA includes kernel compilation
        if first > cfg.max_call_s:
            first = _timed_call(case.fn, device, case.grad_to_none)
            if first > cfg.max_call_s:
                out.update(status=f"slow: one call took {first:.1f} s > {cfg.max_call_s:g} s", median_ms=first * 1e3)
                return out
        t = time_fn(case.fn, device, warmup_ms=cfg.warmup_ms, rep_ms=cfg.rep_ms, grad_to_none=case.grad_to_none,
                    warmed_up=True, min_reps=cfg.min_reps)  # fmt: skip
        out.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps)
        out["tokens_per_s"] = case.tokens / (t.median_ms / 1e3)
        if cell.mode == "decode":
            out["us_per_step"] = t.median_ms * 1e3
            if device.type == "cuda":  # also without launch overhead; a capture failure only loses this figure
                out.update(_graphed_decode(case.fn, device, cfg))
        if case.flops is not None:
            out["flops"] = case.flops
            out["tflops"] = case.flops / (t.median_ms / 1e3) / 1e12
        for g in case.grad_to_none:
            g.grad = None
        out["peak_bytes"] = peak_memory_of(case.fn, device)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one cell failing must not stop the sweep
        out["status"] = _status_of(exc)
    finally:
        case = None
        if device.type == "cuda" and not out["status"].startswith("crash"):
            torch.cuda.empty_cache()
    return out


def _graphed_decode(fn, device, cfg: SpeedConfig) -> dict:
    """``graph_us_per_step`` of a decode step replayed as a CUDA graph, or ``graph_status`` saying why not."""
    from .timing import time_cuda_graph

    try:
        t = time_cuda_graph(fn, device, warmup_ms=cfg.warmup_ms, rep_ms=cfg.rep_ms)
        return {"graph_us_per_step": t.median_ms * 1e3}
    except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside the step; the eager figure stands
        try:
            torch.cuda.synchronize(device)
        except Exception:  # noqa: BLE001
            pass
        return {"graph_status": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"}


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:  # end a line torn by a kill, so this row starts on its own line
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def run_sweep(
    cfg: SpeedConfig,
    device,
    jsonl: Path,
    env: dict,
    *,
    resume: bool = False,
    on_cell: Callable[[Cell, dict | None], None] | None = None,
    measure_fn: Callable[[SpeedConfig, Cell, object], dict] = measure,
) -> Iterator[dict]:
    """Measure every planned cell not yet done; yield and append each row. Stops between cells once
    ``cfg.max_minutes`` have passed (a row with status ``budget`` is not written; the caller is told via
    ``on_cell(cell, None)``)."""
    from .fingerprint import code_fingerprint

    prior = [r for r in read_rows(jsonl) if same_sweep(r, cfg)] if resume else []
    done = done_keys(prior, cfg)
    t_start = time.monotonic()
    too_slow: dict[tuple, tuple[int, str]] = {}
    for r in sorted(prior, key=lambda r: r.get("T") or 0):
        why = str(r.get("status", "")).split(":")[0]
        if why in ("slow", "oom") and row_key(r) in done:
            too_slow.setdefault((r["level"], r["mode"], r["mixer"], r.get("decode_batch")), (r["T"], why))
    base = {"preset": cfg.preset, "dtype": cfg.dtype, "sizes": cfg.sizes, "cfg_heads": cfg.heads,
            "cfg_head_dim": cfg.head_dim, "hidden": cfg.hidden, "num_iter": cfg.num_iter,
            "token_budget": cfg.tokens, "fixed_batch": cfg.batch, "lift_fla_guard": cfg.lift_fla_guard,
            "fla_guard_lifted": cfg.fla_guard_lifted, "fla_guard_active": _guard_active(),
            "tag": cfg.tag}  # fmt: skip
    for cell in plan(cfg):
        if cell.key in done:
            if on_cell:
                on_cell(cell, {"status": "resumed"})
            continue
        if cfg.max_minutes is not None and time.monotonic() - t_start >= cfg.max_minutes * 60:  # 0: only rewrite tables
            if on_cell:
                on_cell(cell, None)
            return
        row = {**base, "level": cell.level, "mode": cell.mode, "mixer": cell.mixer, "T": cell.T,
               "decode_batch": cell.decode_batch, "code": code_fingerprint(cell.mixer, cell.level)}  # fmt: skip
        if cell.series in too_slow and cell.T > too_slow[cell.series][0]:
            t0, why = too_slow[cell.series]
            row["status"] = f"skipped: {why} at T={t0}"
        else:
            row.update(measure_fn(cfg, cell, device))
            if cell.level == "layer":  # the conv implementation these numbers include (fla's, or the fallback)
                from ..layers.blocks import short_conv_impl

                row["short_conv"] = short_conv_impl() if getattr(device, "type", device) == "cuda" else "torch"
            why = str(row["status"]).split(":")[0]
            if why in ("slow", "oom"):
                too_slow.setdefault(cell.series, (cell.T, why))
        row["time_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        row["env"] = env
        append_row(jsonl, row)
        if on_cell:
            on_cell(cell, row)
        yield row
        if str(row["status"]).startswith("crash"):
            raise SweepAborted(f"{cell.label()} broke the CUDA context ({row['status']}); rerun with --resume in a "
                               "new process (that cell is kept as 'crash' and not retried)")  # fmt: skip
