"""The ``gkabench`` command line: one small function per subcommand, no logic beyond argument handling.

User errors (unknown mixer, bad sizes, missing data) print one line naming the fix and exit with code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="gkabench",
    help="Benchmark and evaluation harness for Gated KalmaNet (GKA) and the mixers it competes with.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause into one red line and exit code 2 (no traceback wall)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def pick_device(device: str | None):
    """``--device`` -> torch.device (default: cuda when present); bad names and absent CUDA are user errors."""
    import torch

    from .env import default_device

    if not device:
        return default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu or cuda (or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: gkabench runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA device is visible; drop --device or use --device cpu")
    return dev


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@app.command()
@user_errors
def layers(
    hidden: int = typer.Option(2048, "--hidden", help="hidden size the sizes are stated at"),
    num_heads: int = typer.Option(None, "--num-heads", help="heads for every mixer (default: each mixer's own)"),
    head_dim: int = typer.Option(None, "--head-dim", help="head dim for every mixer (default: each mixer's own)"),
    seq_len: int = typer.Option(2048, "--seq-len", help="sequence length for attention's KV-cache bytes"),
    mixers: str = typer.Option("all", "--mixers", help="comma-separated subset"),
):
    """The registered mixers: parameters per layer, state bytes per sequence, backends here, known issues."""
    from .env import device_name
    from .layers import parse_mixer_list
    from .layers.inventory import mixer_inventory

    if hidden <= 0 or seq_len < 0 or (num_heads is not None and num_heads <= 0) or (head_dim is not None and head_dim <= 0):
        raise ValueError("--hidden, --num-heads and --head-dim must be positive and --seq-len >= 0")
    rows = mixer_inventory(hidden, num_heads, head_dim, seq_len, names=parse_mixer_list(mixers))
    table = Table(title=f"gkabench mixers at hidden {hidden} on {device_name()}",
                  caption=f"state/seq: fp32 recurrent state + conv states in bf16; attention: bf16 KV cache at T={seq_len}")
    for col in ("mixer", "heads x dim", "params/layer", "state/seq", "CPU op", "CUDA op", "runs here", "known issues"):
        table.add_column(col, overflow="fold", no_wrap=col == "mixer",
                         justify="right" if col in ("params/layer", "state/seq") else "left")
    for r in rows:
        table.add_row(
            f"[bold]{r.name}[/bold]",
            f"{r.num_heads} x {r.head_dim}",
            f"{r.params / 1e6:.2f} M",
            fmt_bytes(r.state_bytes),
            r.cpu_op.split(".")[-1].split(" ")[0],
            r.cuda_op.split(" (")[0].split(".")[-1],
            ", ".join(r.backends),
            "\n".join(r.known_issues) or "none detected",
        )
    console.print(table)


@app.command()
@user_errors
def demo(
    mixers: str = typer.Option("all", "--mixers", help="comma-separated subset of mixers"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
):
    """Compare every registered mixer at one size fitted to this machine and print a table."""

    from .bench.demo import DemoSize, compare_mixers
    from .env import device_name
    from .layers import parse_mixer_list

    dev = pick_device(device)
    size = DemoSize.for_device(dev)
    names = parse_mixer_list(mixers)
    if dev.type == "cpu":
        console.print(
            "[yellow]CPU numbers from the pure-PyTorch ops at a small size. "
            "They check that everything runs; they say nothing about GPU speed.[/yellow]"
        )
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(names))
        rows = compare_mixers(dev, size, names, progress=lambda n: progress.advance(task))
    table = Table(
        title=f"{device_name(dev)}: hidden {size.hidden_size}, {size.num_heads} heads x {size.head_dim}, "
        f"batch {size.batch} x {size.seq_len} tokens, {str(size.dtype).replace('torch.', '')}"
    )
    cuda = dev.type == "cuda"
    cols = ["mixer", "params", "state", "fwd ms", "f+b ms", "f+b tok/s", "dec ms"] + (["peak MiB"] if cuda else []) + ["status"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("mixer", "status") else "right", no_wrap=col == "mixer")
    for r in rows:
        def f(key, spec=".1f"):
            v = r.get(key)
            return "-" if v is None else format(v, spec)

        cells = [
            r["mixer"], f"{r['params'] / 1e6:.2f}M" if "params" in r else "-", fmt_bytes(r.get("state_bytes")),
            f("fwd_ms"), f("fwdbwd_ms"), f"{r['fwdbwd_ktok_s'] * 1e3:,.0f}" if "fwdbwd_ktok_s" in r else "-", f("decode_ms", ".2f"),
        ] + ([f("peak_mem_mib", ".0f")] if cuda else []) + [r["status"]]  # fmt: skip
        table.add_row(*cells)
    console.print(table)
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(code=1)


@app.command()
@user_errors
def check(
    ops: str = typer.Option(None, "--ops", help="comma-separated op prefixes (gka, attention, gated_deltanet, gla, mamba2)"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
    lift_fla_guard: bool = typer.Option(False, "--lift-fla-guard", help="run fla's gated backward despite its Hopper/Triton<3.7.1 guard, to test it"),
    json_out: str = typer.Option(None, "--json", help="also write the rows to this JSON file"),
    quick: bool = typer.Option(False, "--quick", help="one shape per op (fewer Triton compilations)"),
    shapes: str = typer.Option(None, "--shapes", help="only cases whose shape label contains one of these comma-separated strings, e.g. D64 or D128 (the shapes a run will use; each new fla shape costs minutes of autotuning on a fresh GPU)"),
):
    """Every fast kernel here against its float64 reference (fresh random data, forward and gradients).

    Exit code 1 when any case fails or errors."""
    import json

    import torch

    from .check import any_failure, run_checks
    from .env import device_name, environment
    from .io import write_text_atomic

    dev = pick_device(device)
    if dev.type == "cpu":
        why = "No CUDA device" if not torch.cuda.is_available() else "CPU run (--device cpu)"
        console.print(f"[yellow]{why}: no Triton paths are checked; the pure-PyTorch paths are checked against the exact float64 solve.[/yellow]")
    op_list = [o.strip() for o in ops.split(",")] if ops else None
    colors = {"pass": "green", "FAIL": "red", "error": "red", "refused": "yellow", "skip": "dim"}

    done_rows: list = []
    env = environment(dev) if json_out else None

    def write_json(rows):
        write_text_atomic(json_out, json.dumps({"environment": env, "rows": [r.as_dict() for r in rows]}, indent=1))

    def report(case, case_rows):  # one line per case as it finishes, so a killed run still shows its progress
        done_rows.extend(case_rows)
        if json_out:  # rewritten after every case: a run cut by a time limit keeps the cases it finished
            write_json(done_rows)
        scored = [r for r in case_rows if r.rel_err is not None and r.tol]
        worst_row = max(scored, key=lambda r: r.rel_err / r.tol, default=None)
        worst = worst_row.rel_err / worst_row.tol if worst_row is not None else None
        status = "pass" if case_rows and all(r.status == "pass" for r in case_rows) else (case_rows[0].status if case_rows else "-")
        if any(r.status == "FAIL" for r in case_rows):
            status = "FAIL"
        tail = f"worst err/tol {worst:.2f} ({worst_row.quantity})" if worst is not None else (case_rows[0].note if case_rows else "")
        console.print(f"[{colors.get(status, 'white')}]{status:7s}[/] {case.op} | {case.case} | {str(case.dtype).replace('torch.', '')} | {tail}", highlight=False)

    shape_list = [x.strip() for x in shapes.split(",") if x.strip()] if shapes else None
    try:
        rows = run_checks(dev, op_list, lift_guard=lift_fla_guard, progress=report, quick=quick, shapes=shape_list)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    table = Table(title=f"gkabench check on {device_name(dev)}")
    for col in ("op", "case", "dtype", "quantity", "rel err", "tol", "status", "note"):
        table.add_column(col, justify="right" if col in ("rel err", "tol") else "left", overflow="fold")
    for r in rows:
        table.add_row(
            r.op, r.case, r.dtype, r.quantity,
            "-" if r.rel_err is None else f"{r.rel_err:.2e}", "-" if r.tol is None else f"{r.tol:.0e}",
            f"[{colors.get(r.status, 'white')}]{r.status}[/]", r.note,
        )  # fmt: skip
    console.print(table)
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "error", "refused")}
    console.print(", ".join(f"{v} {k}" for k, v in counts.items()))
    if json_out:
        write_json(rows)
    if any_failure(rows):
        raise typer.Exit(code=1)


@app.command()
@user_errors
def speed(
    mixers: str = typer.Option("all", "--mixers", help="comma-separated subset of mixers"),
    level: str = typer.Option("all", "--level", help="op (core op only), layer (full mixer), or both: op,layer"),
    modes: str = typer.Option("all", "--modes", help="comma-separated: fwd, fwdbwd, prefill, decode"),
    lengths: str = typer.Option(None, "--lengths", help="sequence lengths, e.g. 1k,2k,4k (GPU default 1k..32k; sets every mode's lengths unless given below)"),
    prefill_lengths: str = typer.Option(None, "--prefill-lengths", help="lengths for prefill (GPU default 1k..128k)"),
    decode_lengths: str = typer.Option(None, "--decode-lengths", help="prefill lengths before decode (GPU default 2k,32k,128k)"),
    decode_batches: str = typer.Option(None, "--decode-batches", help="decode batch sizes (GPU default 1,8,64)"),
    tokens: str = typer.Option(None, "--tokens", help="token budget per call, B = tokens / T (GPU default 32k)"),
    batch: int = typer.Option(None, "--batch", help="fixed batch instead of a token budget"),
    heads: int = typer.Option(None, "--heads", help="heads (preset matched; GPU default 16)"),
    head_dim: int = typer.Option(None, "--head-dim", help="head dim (preset matched; GPU default 128)"),
    hidden: int = typer.Option(None, "--hidden", help="hidden size for the layer level (default heads x head dim, GPU 2048)"),
    num_iter: int = typer.Option(None, "--num-iter", help="GKA Chebyshev steps (GPU default 30)"),
    dtype: str = typer.Option(None, "--dtype", help="bf16 (GPU default), fp16, fp32 (CPU default), fp64"),
    preset: str = typer.Option("matched", "--preset", help="matched: same heads/head dim for all; paper: registry (fla) defaults"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
    out: str = typer.Option("results/speed", "--out", help="output folder"),
    tag: str = typer.Option(None, "--tag", help="file name tag (default: the preset)"),
    resume: bool = typer.Option(False, "--resume", help="skip cells already in the newest matching JSONL"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="stop between cells after this long (rerun with --resume); 0 with --resume measures nothing and rewrites the tables from the JSONL (e.g. after shards on several GPUs)"),
    max_call_s: float = typer.Option(None, "--max-call-s", help="a call slower than this marks the cell slow and skips longer T"),
    rep_ms: float = typer.Option(None, "--rep-ms", help="timing budget per cell in ms"),
    lift_fla_guard: bool = typer.Option(False, "--lift-fla-guard", help="lift fla's Hopper guard for Triton < 3.7.1 (timing only); recorded in every row"),
):
    """Throughput, latency and memory of every mixer as the sequence grows: JSONL/CSV/markdown tables and a plot."""
    from pathlib import Path

    from .bench.speed import make_config, print_tables, run_speed

    dev = pick_device(device)
    cfg = make_config(
        device=dev, mixers=mixers, levels=level, modes=modes, lengths=lengths, prefill_lengths=prefill_lengths,
        decode_lengths=decode_lengths, decode_batches=decode_batches, tokens=tokens, batch=batch, heads=heads,
        head_dim=head_dim, hidden=hidden, num_iter=num_iter, dtype=dtype, preset=preset, max_minutes=max_minutes,
        max_call_s=max_call_s, rep_ms=rep_ms, lift_fla_guard=lift_fla_guard, tag=tag,
    )  # fmt: skip
    if dev.type == "cpu":
        console.print(
            "[yellow]No GPU: CPU numbers from the pure-PyTorch reference ops at small shapes. "
            "They check that the harness runs; they say nothing about GPU speed.[/yellow]"
        )
    result = run_speed(cfg, dev, Path(out), resume=resume, console=console)
    print_tables(console, result.rows, cfg)
    if result.incomplete:
        console.print(f"[yellow]{result.incomplete}[/yellow]")
    console.print("wrote " + ", ".join(str(p) for p in result.paths))
    if result.interrupted:
        raise typer.Exit(code=130)


def _parse_list(text: str | None, cast, what: str, example: str = "64,128") -> list | None:
    """``"64,128"`` -> ``[64, 128]``; None stays None. A bad item raises a one-line error naming the option."""
    if text is None:
        return None
    try:
        return [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what}: could not read {text!r}; pass comma-separated values, e.g. {what} {example}") from None


def _lr_item(text: str) -> float | str:
    """A learning rate, or ``best`` (the MQAR sweep's per-cell best so far)."""
    return "best" if text == "best" else float(text)


def _parse_mixer_options(items: list[str] | None) -> dict:
    """``["gka.use_alpha=false", "attention.rope_theta=500000"]`` -> ``{"gka": {"use_alpha": False}, ...}``."""
    import json

    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        mixer, dot, opt = key.partition(".")
        if not (sep and dot and mixer and opt):
            raise ValueError(f"--mixer-option {item!r}: use MIXER.OPTION=VALUE, e.g. --mixer-option gka.use_alpha=false")
        try:
            value = json.loads(raw.lower() if raw.lower() in ("true", "false", "null") else raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(mixer, {})[opt] = value
    return out


@app.command()
@user_errors
def train(
    out: str = typer.Option(..., "--out", help="run directory: log.jsonl and checkpoint/ (a rerun resumes from it)"),
    mixer: str = typer.Option("gka", "--mixer", help="mixer or per-layer pattern, e.g. gka or gka,gka,gka,attention"),
    preset: str = typer.Option("tiny", "--preset", help="model size: tiny, 125m, 440m"),
    hidden: int = typer.Option(None, "--hidden", help="override the preset's hidden size"),
    num_layers: int = typer.Option(None, "--layers", help="override the preset's layer count"),
    num_heads: int = typer.Option(None, "--num-heads"),
    head_dim: int = typer.Option(None, "--head-dim"),
    intermediate_size: int = typer.Option(None, "--intermediate-size", help="SwiGLU width (default 8/3 x hidden); 0 = blocks without an MLP"),
    embed_dropout: float = typer.Option(0.0, "--embed-dropout", help="dropout on the input embeddings while training"),
    mixer_option: list[str] = typer.Option(None, "--mixer-option", help="MIXER.OPTION=VALUE, repeatable (gka.use_alpha=false)"),
    learned_positions: int = typer.Option(0, "--learned-positions", help="N > 0: learned absolute position embeddings for N tokens (Zoology's attention: with --mixer-option attention.use_rope=false)"),
    data: str = typer.Option("mqar", "--data", help="mqar, facts (generated rag/longqa/niah documents with answers; --seq-len 1024 or more), or comma-separated local .txt / .jsonl files"),
    eval_data: str = typer.Option(None, "--eval-data", help="held-out text files (default: last 2% of --data)"),
    text_field: str = typer.Option("text", "--text-field", help="JSONL field holding the document text"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="local tokenizer.json or directory (default: bytes)"),
    seq_len: int = typer.Option(256, "--seq-len"),
    packing: bool = typer.Option(True, "--packing/--no-packing", help="pack documents with cu_seqlens (no cross-document attention)"),
    mqar_vocab: int = typer.Option(8192, "--mqar-vocab"),
    mqar_pairs: int = typer.Option(64, "--mqar-pairs"),
    mqar_curriculum: bool = typer.Option(False, "--mqar-curriculum", help="mqar: train on Zoology's mixture of pair counts P/16..P (eval on P only)"),
    facts_questions: int = typer.Option(1, "--facts-questions", help="--data facts: questions per rag document over one context (more answers to learn from per document)"),
    steps: int = typer.Option(1000, "--steps"),
    batch_size: int = typer.Option(64, "--batch-size", help="sequences per optimizer step over all GPUs"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: float = typer.Option(1e-3, "--lr"),
    warmup: int = typer.Option(100, "--warmup"),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    grad_clip: float = typer.Option(1.0, "--grad-clip"),
    eval_every: int = typer.Option(100, "--eval-every"),
    save_every: int = typer.Option(200, "--save-every"),
    log_every: int = typer.Option(10, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from out/checkpoint when present"),
    lift_fla_guard: bool = typer.Option(False, "--lift-fla-guard", help="run fla's gated backward despite its Hopper/Triton<3.7.1 guard (only after `gkabench check` passed); recorded in the log"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="checkpoint and stop after this long; rerun the command to continue"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="after 3 eager steps, replay each step as one captured CUDA graph (small models are launch-bound); one GPU, --data mqar, no --grad-accum"),
):
    """Train a causal LM with any mixer on MQAR or local text (run under torchrun for several GPUs)."""
    from .train import TrainConfig
    from .train import train as run_train

    cfg = TrainConfig(
        out_dir=out, mixer=mixer, preset=preset, hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
        head_dim=head_dim, intermediate_size=intermediate_size, mixer_options=_parse_mixer_options(mixer_option), learned_positions=learned_positions, embed_dropout=embed_dropout, data=data, eval_data=eval_data,
        text_field=text_field, tokenizer=tokenizer, seq_len=seq_len, packing=packing, mqar_vocab=mqar_vocab,
        mqar_pairs=mqar_pairs, mqar_curriculum=mqar_curriculum, facts_questions=facts_questions, steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup,
        weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every, save_every=save_every,
        log_every=log_every, seed=seed, device=device, resume=resume, lift_fla_guard=lift_fla_guard,
        max_minutes=max_minutes, cuda_graph=cuda_graph,
    )  # fmt: skip
    summary = run_train(cfg)
    summary.pop("model", None)
    import os

    if os.environ.get("RANK", "0") == "0":
        table = Table(title=f"gkabench train: {out}")
        table.add_column("field")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(table)


@app.command()
@user_errors
def mqar(
    mixers: str = typer.Option(None, "--mixers", help="comma-separated mixers / variants (gka_plain = GKA without gate and alpha); all = every one"),
    dims: str = typer.Option(None, "--dims", help="model dims, e.g. 64,128,256"),
    lengths: str = typer.Option(None, "--lengths", help="SEQ_LEN:PAIRS list, e.g. 256:64,512:128,1024:256"),
    lrs: str = typer.Option(None, "--lrs", help="learning rates, e.g. 3e-4,1e-3,3e-3,1e-2; best = each cell's best lr so far (e.g. with --seeds 1,2)"),
    seeds: str = typer.Option(None, "--seeds", help="seeds per run, e.g. 0,1,2 (default 0); tables pick the lr on the first seed and average the seeds at it"),
    steps: int = typer.Option(None, "--steps"),
    batch_size: int = typer.Option(None, "--batch-size"),
    vocab: int = typer.Option(None, "--vocab"),
    num_layers: int = typer.Option(None, "--layers"),
    num_heads: int = typer.Option(None, "--num-heads", help="heads for every mixer at every dim (default: model dim / head dim, so the mixer and its state widen with the model)"),
    head_dim: int = typer.Option(None, "--head-dim", help="head dim for every mixer (default 64 on GPU, 16 on CPU)"),
    eval_examples: int = typer.Option(None, "--eval-examples"),
    curriculum: bool = typer.Option(None, "--curriculum/--no-curriculum", help="train on Zoology's mixture of pair counts P/16..P, evaluate on P (default on)"),
    early_stop_acc: float = typer.Option(None, "--early-stop-acc", help="end a run once its periodic eval reaches this accuracy (default 0.99; 0 = always train every step)"),
    out: str = typer.Option("results/mqar", "--out", help="where NAME.jsonl / .md / .png go"),
    name: str = typer.Option(None, "--name", help="file stem (default mqar on GPU, mqar_cpu_tiny on CPU)"),
    run_dir: str = typer.Option(None, "--run-dir", help="per-run training logs go to RUN_DIR/NAME/<run> (default OUT/runs/NAME/<run>)"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
    jobs: int = typer.Option(1, "--jobs", help="train this many runs at once in worker processes on the device"),
    shard: str = typer.Option(None, "--shard", help="I/N: run only every N-th run from the I-th (one process per GPU)"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="start no run after this long (rerun to resume)"),
    stop_file: str = typer.Option(None, "--stop-file", help="start no run once this file exists (runs in flight finish): winds down a sweep left running in the background"),
    deadline_file: str = typer.Option(None, "--deadline-file", help="once this file exists it holds a Unix time: only runs expected (from finished rows on this kind of machine) to end before it start"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs not yet in the results file and stop (trains nothing, writes nothing)"),
    lift_fla_guard: bool = typer.Option(False, "--lift-fla-guard", help="run fla's gated backward despite its Hopper/Triton<3.7.1 guard (only after `gkabench check` passed at these shapes); recorded in every row"),
    grid: str = typer.Option("auto", "--grid", help="default grid: gpu (the paper-scale sweep), cpu (tiny), auto (by device); e.g. --grid gpu --max-minutes 0 renders a GPU sweep's table and plot on a CPU machine"),
    cuda_graph: str = typer.Option(None, "--cuda-graph", help="mixers (comma-separated, or all) whose runs replay each training step as a CUDA graph; check them first with scripts/mqar_graph_check.py"),
):
    """MQAR sweep: mixers x model dims x (seq_len, pairs) x learning rates; best accuracy per cell, resumable."""
    import torch
    from rich.progress import Progress

    from .tasks.mqar_sweep import MIXER_VARIANTS, SweepConfig, parse_shard, pending_runs, run_mqar_sweep, shard_runs

    gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA device is visible; drop --device or use --device cpu")
    mixer_list = _parse_list(mixers, str, "--mixers")
    if mixer_list == ["all"]:
        from .layers import mixer_names

        mixer_list = [*mixer_names(), *MIXER_VARIANTS]
    length_list = None
    if lengths is not None:
        try:
            length_list = [tuple(int(x) for x in item.split(":")) for item in lengths.split(",") if item.strip()]
            assert all(len(t) == 2 for t in length_list)
        except (ValueError, AssertionError):
            raise ValueError(f"--lengths: could not read {lengths!r}; pass SEQ_LEN:PAIRS items, e.g. --lengths 256:64,512:128") from None
    if grid not in ("auto", "gpu", "cpu"):
        raise ValueError(f"--grid must be auto, gpu or cpu, got {grid!r}")
    sweep = SweepConfig.defaults_for(
        gpu if grid == "auto" else grid == "gpu", mixers=mixer_list, dims=_parse_list(dims, int, "--dims"), lengths=length_list, lrs=_parse_list(lrs, _lr_item, "--lrs", "1e-3,3e-3"), seeds=_parse_list(seeds, int, "--seeds", "0,1,2"),
        steps=steps, batch_size=batch_size, vocab_size=vocab, num_layers=num_layers, num_heads=num_heads,
        head_dim=head_dim, eval_examples=eval_examples, out_dir=out, name=name, device=device, run_dir=run_dir,
        lift_fla_guard=lift_fla_guard or None, early_stop_acc=early_stop_acc, curriculum=curriculum,
        cuda_graph_mixers=_parse_list(cuda_graph, str, "--cuda-graph"),
    )  # fmt: skip
    shard_i, shard_n = parse_shard(shard)
    if dry_run:
        from pathlib import Path

        from .tasks.mqar_schedule import other_sweeps_rows, planned_seconds
        from .tasks.mqar_sweep import read_rows
        from .tasks.mqar_tables import missing_summary

        todo = pending_runs(sweep, (shard_i, shard_n))
        console.print(f"{len(todo)} of {len(shard_runs(sweep, (shard_i, shard_n)))} runs not yet in {out}/{sweep.name}.jsonl (by length and lr):")
        for line in missing_summary(todo) if todo else []:
            console.print(f"  {line}", highlight=False)
        jsonl = Path(out) / f"{sweep.name}.jsonl"
        plan = planned_seconds(todo, read_rows(jsonl), other_sweeps_rows(jsonl)) if todo else None
        if plan:
            gpu_name, seconds, unknown = plan
            console.print(f"about {seconds / 3600:.1f} h of {gpu_name} run time summed over these runs (median of comparable finished runs; "
                          f"~half that in wall time with 2 at a time, as they ran){f'; {unknown} with no estimate' if unknown else ''}", highlight=False)
        return
    if not gpu and grid == "gpu" and max_minutes != 0:
        console.print("[yellow]The GPU grid on a CPU: any run not yet in the file trains through the slow reference ops; --max-minutes 0 only renders.[/yellow]")
    elif not gpu and grid != "gpu":
        console.print("[yellow]No GPU: a CPU-tiny sweep through the pure-PyTorch reference ops; it shows the pipeline works, not the paper's result.[/yellow]")
    total = len(shard_runs(sweep, (shard_i, shard_n)))
    with Progress(console=console) as progress:
        task = progress.add_task(f"MQAR {sweep.name}", total=total)

        def on_run(run, row):
            what = "skip (done)" if row is None else (f"FAILED {row['error']}" if row.get("error") else f"acc {row['accuracy']:.3f}")
            progress.console.print(f"{run['mixer']:>16} d={run['dim']:<4} T={run['seq_len']:<5} P={run['num_pairs']:<4} lr={run['lr']:<7g} {what}")
            progress.advance(task)

        try:
            rows = run_mqar_sweep(sweep, on_run=on_run, jobs=jobs, shard=(shard_i, shard_n), max_minutes=max_minutes, stop_file=stop_file, deadline_file=deadline_file)
        except KeyboardInterrupt as exc:
            err_console.print(f"[yellow]{exc or 'MQAR sweep interrupted; finished runs are kept, rerun to resume'}[/yellow]", highlight=False)
            raise typer.Exit(code=130) from None
    from .tasks.mqar_sweep import best_per_cell

    best = best_per_cell(rows)
    table = Table(title=f"MQAR best accuracy over lrs ({len(rows)} runs) -> {out}/{sweep.name}.{{jsonl,md,png}}")
    seeded = not best.empty and (best["seeds"] > 1).any()
    for col in ("mixer", "seq_len", "pairs", "dim", "accuracy", "best lr", *(("seeds", "min-max") if seeded else ())):
        table.add_column(col, justify="left" if col == "mixer" else "right")
    for r in best.itertuples():
        spread = (str(r.seeds), f"{r.acc_min:.3f}-{r.acc_max:.3f}") if seeded else ()
        table.add_row(r.mixer, str(r.seq_len), str(r.num_pairs), str(r.dim), f"{r.accuracy:.3f}", f"{r.lr:g}", *spread)
    console.print(table)


@app.command("eval")
@user_errors
def eval_(
    task: str = typer.Option("rag,longqa,niah", "--task", help="rag, longqa, niah (all flavours) or task.flavour (rag.nq, niah.niah_single); lm-eval:<t1>,<t2> for lm-eval tasks"),
    model: str = typer.Option(..., "--model", help="gkabench checkpoint / run dir, local HF model dir, or oracle / closed-book (reference readers)"),
    lengths: str = typer.Option("4k,8k,16k,32k,64k,128k", "--lengths", help="input lengths in the model's tokens, e.g. 4k,8k"),
    n: int = typer.Option(50, "--n", help="rows per task flavour and length (depths cycle 0, .25, .5, .75, 1)"),
    data: str = typer.Option(None, "--data", help="folder with HELMET RAG jsonl / RULER squad.json, hotpotqa.json (default: generated fictional facts); lm-eval: local task data"),
    batch_size: int = typer.Option(1, "--batch-size", help="rows per generate call (left-padded)"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="answer budget (default 16 rag/longqa, 48 niah; x3 for the byte tokenizer)"),
    chunk_size: int = typer.Option(8192, "--chunk-size", help="prefill chunk in tokens (the cache carries state between chunks); 0 = one call (attention's flash path)"),
    out: str = typer.Option("results/eval", "--out", help="folder for <name>.jsonl / .md / .csv"),
    name: str = typer.Option(None, "--name", help="result file stem (default: the model directory's name)"),
    cache_dir: str = typer.Option(None, "--cache-dir", help="task row cache (default ~/.cache/gkabench/tasks)"),
    seed: int = typer.Option(0, "--seed"),
    limit: int = typer.Option(None, "--limit", help="lm-eval: examples per task"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)"),
    dtype: str = typer.Option(None, "--dtype", help="bf16 (CUDA default), fp16, fp32 (CPU default)"),
):
    """Long-context tasks (rag, longqa, niah) fitted to each length with the model's tokenizer; lm-eval tasks."""
    from .evaluate import EvalConfig, run_eval, run_lm_eval_tasks
    from .tasks.fitting import parse_lengths

    ours, _, lm_tasks = task.partition("lm-eval:")
    ours = ours.strip().strip(",")
    if dtype not in (None, "bf16", "fp16", "fp32"):
        raise ValueError(f"--dtype {dtype!r}: choose bf16, fp16 or fp32")
    if ours and n < 1:
        raise ValueError(f"--n {n}: rows per task flavour and length must be at least 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: the answer budget must be at least 1 token")
    if lm_tasks:
        names = [t.strip() for t in lm_tasks.split(",") if t.strip()]
        result, path = run_lm_eval_tasks(model, names, data, limit, batch_size, device, out, name)
        console.print(f"lm-eval {', '.join(names)} -> {path}")
    if not ours:
        return
    cfg = EvalConfig(
        model=model, tasks=ours, lengths=parse_lengths(lengths), n=n, data=data,
        batch_size=batch_size, max_new_tokens=max_new_tokens, out=out, name=name, device=device, seed=seed,
        cache_dir=cache_dir, chunk_size=chunk_size, dtype=dtype,
    )  # fmt: skip
    result = run_eval(cfg, console=console)
    df = result.summary
    if df is not None and not df.empty:
        from .tasks.fitting import format_length

        table = Table(title=f"gkabench eval: {model} (score x100)")
        lens = sorted(df.length.unique())
        for col in ("task", "flavour", *(format_length(int(x)) for x in lens)):
            table.add_column(col, justify="left" if col in ("task", "flavour") else "right")
        for (t, f), g in df.groupby(["task", "flavour"], sort=True):
            by = dict(zip(g.length, g.score, strict=True))
            table.add_row(t, f, *(f"{by[x]:.1f}" if x in by else "-" for x in lens))
        console.print(table)
    if result.paths:
        console.print("wrote " + ", ".join(str(p) for p in result.paths))
    if result.interrupted:
        console.print("[yellow]interrupted: rows done are kept; rerun the same command to resume[/yellow]")
        raise typer.Exit(code=130)


@app.command()
@user_errors
def report(
    results: str = typer.Option("results", "--results", help="folder holding eval/, speed/ and mqar/ result JSONL"),
    out: str = typer.Option(None, "--out", help="output folder (default RESULTS/report)"),
    baseline: str = typer.Option(None, "--baseline", help="model or mixer name for the differences (default gated_deltanet when present)"),
):
    """Comparison tables from everything under results/: scores per task x length, the paper's category averages,
    absolute and relative differences against a baseline, speed and MQAR summaries (markdown, CSV, PNG)."""
    from .report import make_report

    res = make_report(results, out, baseline)
    cols, body = res.summary
    if body:
        table = Table(title="category averages (percent)" + (f"; relative to {res.baseline}" if res.baseline else ""))
        for c in cols:
            table.add_column(c, justify="left" if c == "model" else "right")
        for model, cells in body:
            row = [model]
            for c in cells:
                if c is None or c.value is None:
                    row.append("-")
                else:
                    rel = c.rel_diff
                    row.append(f"{c.value:.2f}" + ("*" if not c.complete else "") + (f" ({rel:+.1f}%)" if rel is not None and model != res.baseline else ""))
            table.add_row(*row)
        console.print(table)
    for line in getattr(res, "notes", None) or []:
        console.print(line, highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in res.paths))


def main() -> None:
    from .kernels.parallel_compile import enable_on_cuda

    enable_on_cuda()  # Triton autotuning compiles its configs on a thread pool (see that module)
    app()


if __name__ == "__main__":
    sys.exit(main())
