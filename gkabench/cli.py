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
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


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

    rows = mixer_inventory(hidden, num_heads, head_dim, seq_len, names=parse_mixer_list(mixers))
    table = Table(title=f"gkabench mixers at hidden {hidden} (state in bf16 conv + fp32 recurrent; KV at T={seq_len}) on {device_name()}")
    for col in ("mixer", "heads x dim", "params/layer", "state/seq", "backends here", "known issues"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            f"[bold]{r.name}[/bold]\n{r.summary}",
            f"{r.num_heads} x {r.head_dim}",
            f"{r.params / 1e6:.2f} M",
            fmt_bytes(r.state_bytes),
            "\n".join(r.backends),
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
    import torch

    from .bench.demo import DemoSize, compare_mixers
    from .env import default_device, device_name
    from .layers import parse_mixer_list

    dev = torch.device(device) if device else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA device is visible; drop --device or use --device cpu")
    size = DemoSize.for_device(dev)
    names = parse_mixer_list(mixers)
    if dev.type == "cpu":
        console.print(
            "[yellow]No GPU: CPU numbers from the pure-PyTorch reference ops at a small size. "
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
    for col in ("mixer", "params", "state/seq", "fwd ms", "fwd+bwd ms", "fwd ktok/s", "fwd+bwd ktok/s", "peak MiB", "decode ms", "status"):
        table.add_column(col, justify="right" if col not in ("mixer", "status") else "left")
    for r in rows:
        def f(key, spec=".2f"):
            v = r.get(key)
            return "-" if v is None else format(v, spec)

        table.add_row(
            r["mixer"], f"{r['params'] / 1e6:.2f} M" if "params" in r else "-", fmt_bytes(r.get("state_bytes")),
            f("fwd_ms"), f("fwdbwd_ms"), f("fwd_ktok_s", ".1f"), f("fwdbwd_ktok_s", ".1f"), f("peak_mem_mib", ".0f"),
            f("decode_ms", ".3f"), r["status"],
        )  # fmt: skip
    console.print(table)
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
