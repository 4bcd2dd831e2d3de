"""The MQAR sweep of the GKA paper's figure (``gkabench mqar``): 2-layer models per mixer over model dims and
(seq_len, pairs), the best accuracy over a few learning rates per cell.

Every run appends one JSONL row as soon as it finishes; a rerun skips the runs already in the file, so an
interrupted sweep resumes where it stopped. The markdown table and the plot are derived from the rows. Runs can
train side by side in worker processes (``jobs``) and be split between processes / GPUs (``shard``).

    rows = run_mqar_sweep(SweepConfig.defaults_for(gpu=True, head_dim=64), jobs=3)
"""

from __future__ import annotations

from dataclasses import dataclass

from .mqar import MQARConfig
from .mqar_tables import best_per_cell, incomplete_cells, write_markdown, write_plot  # noqa: F401  (importable from here too)

# Named variants: the paper's MQAR figure ran GKA without the forgetting gate and without alpha.
MIXER_VARIANTS: dict[str, tuple[str, dict]] = {
    "gka_plain": ("gka", {"use_decay": False, "use_alpha": False}),
    # fla's GLA layer has no short convolution by default (and so neither has our "gla"); every other linear mixer
    # here has one, and MQAR leans on it (a key must be bound to the token after it)
    "gla_conv": ("gla", {"use_short_conv": True}),
    # Zoology's MQAR attention baseline differs from ours ("attention": RoPE, SwiGLU MLP in every block, no dropout)
    # in its position scheme (learned absolute position embeddings added to the token embeddings, no RoPE), in
    # having no MLP (its MQAR sweep configs swap the default MLP for an identity) and in dropout; the first two
    # variants take one difference each (MODEL_VARIANTS: the model side)
    "attention_abspos": ("attention", {"use_rope": False}),
    "attention_nomlp": ("attention", {}),
    # all of Zoology's differences at once: learned positions, no RoPE, no MLP, dropout 0.1 on the attention
    # probabilities and on the embeddings (its ModelConfig's embed_dropout default)
    "attention_zoology": ("attention", {"use_rope": False, "dropout": 0.1}),
}
SEQ_LEN = "seq_len"  # in MODEL_VARIANTS: the run's sequence length
# Model settings of variants (GKABenchConfig fields), beyond the mixer's options.
MODEL_VARIANTS: dict[str, dict] = {
    "attention_abspos": {"learned_positions": SEQ_LEN},  # one learned position per token of the run
    "attention_nomlp": {"intermediate_size": 0},  # blocks of the mixer alone
    "attention_zoology": {"learned_positions": SEQ_LEN, "intermediate_size": 0, "embed_dropout": 0.1},
}


def model_options(run: dict) -> dict:
    """GKABenchConfig settings of ``run``'s variant (empty for a plain mixer), ``SEQ_LEN`` resolved."""
    return {k: run["seq_len"] if v == SEQ_LEN else v for k, v in MODEL_VARIANTS.get(run["mixer"], {}).items()}


def base_mixer(name: str) -> str:
    """The registered mixer a variant runs (``"attention_zoology"`` -> ``"attention"``); any other name as it is
    (unlike :func:`resolve_variant`, no check: rows of any sweep pass through here)."""
    return MIXER_VARIANTS[name][0] if name in MIXER_VARIANTS else name


def resolve_variant(name: str) -> tuple[str, dict]:
    """``"gka_plain"`` -> ``("gka", {...})``; a registered mixer name -> ``(name, {})``."""
    if name in MIXER_VARIANTS:
        base, opts = MIXER_VARIANTS[name]
        return base, dict(opts)
    from ..layers import get_mixer_spec

    try:
        get_mixer_spec(name)
    except ValueError as exc:
        raise ValueError(f"{exc}; MQAR variants: {', '.join(MIXER_VARIANTS)}") from None
    return name, {}


@dataclass
class SweepConfig:
    mixers: list[str]
    dims: list[int]
    lengths: list[tuple[int, int]]  # (seq_len, num_pairs)
    lrs: list[float]
    vocab_size: int = 8192
    steps: int = 3000
    batch_size: int = 64
    num_layers: int = 2
    # The mixer's width follows the model dim, as in Zoology and the paper (a wider model holds a larger state): with
    # num_heads None every run has dim // head_dim heads of head_dim. A fixed num_heads keeps every dim's mixer (and
    # state) the same size: sessions 3-9 ran that by accident (the tiny preset's 2 heads of 64 at every dim; those rows
    # are results/mqar/mqar_fixed_heads.jsonl). head_dim None: each mixer's / the preset's own heads (fixed too).
    num_heads: int | None = None
    head_dim: int | None = None
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_examples: int = 1000
    seed: int = 0
    # several seeds per run (e.g. [0, 1, 2]); None = [seed]. The tables choose each cell's lr on the first seed and
    # average the seeds at it (mqar_tables.best_per_cell)
    seeds: list[int] | None = None
    device: str | None = None
    out_dir: str = "results/mqar"
    name: str = "mqar"
    run_dir: str | None = None  # per-run logs (not results): RUN_DIR/NAME/<run>; default OUT_DIR/runs/NAME/<run>
    lift_fla_guard: bool = False  # fla's Hopper guard on gated backward; recorded per row as fla_guard_lifted
    # A run ends once an evaluation (every `check_every` steps, on the run's eval set) reaches this accuracy: a
    # solved run cannot improve its cell, and on the GPU most of a sweep's cells are solved long before `steps`.
    # 0 trains every run for all its steps. Rows record steps_done.
    early_stop_acc: float = 0.99
    check_every: int = 250
    # train on Zoology's mixture of pair counts (curriculum_mixture); evaluation is on the cell's own (T, P)
    curriculum: bool = True
    # sweep mixers (e.g. ["gka", "attention"], or ["all"]) whose runs replay each training step as a CUDA graph
    # (gkabench.train_graph; the device script enables those scripts/mqar_graph_check.py found exact on the machine).
    # How a step executes, not what it computes: not part of a run's identity; rows record cuda_graph.
    cuda_graph_mixers: list[str] | None = None

    def runs_root(self):
        """Folder of the per-run training logs: ``run_dir/name`` when given, else ``out_dir/runs/name``."""
        from pathlib import Path

        return Path(self.run_dir) / self.name if self.run_dir else Path(self.out_dir) / "runs" / self.name

    def validate(self) -> None:
        """One-line ValueErrors for counts a sweep cannot run with."""
        for name, option in (("steps", "--steps"), ("batch_size", "--batch-size"), ("num_layers", "--layers"),
                             ("eval_examples", "--eval-examples"), ("vocab_size", "--vocab")):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{option} must be an integer >= 1, got {v!r}")
        for name, option in (("num_heads", "--num-heads"), ("head_dim", "--head-dim")):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{option} must be an integer >= 1, got {v!r}")
        bad_dims = [d for d in self.dims if not isinstance(d, int) or d < 1]
        if bad_dims:
            raise ValueError(f"--dims must be integers >= 1, got {bad_dims[0]!r}")
        if self.num_heads is None and self.head_dim:
            unfit = [d for d in self.dims if d % self.head_dim]
            if unfit:
                raise ValueError(
                    f"--dims: model dim {unfit[0]} is not a multiple of --head-dim {self.head_dim} (each run has dim / head_dim "
                    f"heads); pass dims that are, another --head-dim, or --num-heads N to fix the heads at every dim"
                )
        bad_lrs = [lr for lr in self.lrs if lr != BEST_LR and not (isinstance(lr, (int, float)) and lr > 0)]
        if bad_lrs:
            raise ValueError(f"--lrs must be > 0 (or 'best'), got {bad_lrs[0]!r}")
        bad_seeds = [x for x in self.seeds or [] if not isinstance(x, int) or x < 0]
        if bad_seeds:
            raise ValueError(f"--seeds must be integers >= 0, got {bad_seeds[0]!r}")
        if self.cuda_graph_mixers:
            from ..layers import mixer_names

            known = {"all", *mixer_names(), *MIXER_VARIANTS}
            unknown = [m for m in self.cuda_graph_mixers if m not in known]
            if unknown:
                raise ValueError(f"--cuda-graph: unknown mixer {unknown[0]!r}; pass sweep mixers (e.g. gka,attention) or all")

    @classmethod
    def defaults_for(cls, gpu: bool, **overrides) -> "SweepConfig":
        """The paper-scale sweep on a GPU; a CPU-tiny one (it only shows the pipeline works) otherwise."""
        if gpu:
            # Batch 256 on a GPU: a 2-layer model's step is launch-bound (session 4: ~68 ms per step at batch 64 with
            # 10 runs sharing an H200, and attention still at 1.5-5% accuracy after 3000 steps = 192k examples), so
            # 4x the examples per step cost little more time; runs stop early once solved.
            base = dict(
                # attention_zoology: Zoology's MQAR attention (session 16: it learned 256/64 at d = 128 / 256, where
                # our RoPE + MLP "attention" stayed on the plateau with every lr tried)
                mixers=["gka", "gka_plain", "gated_deltanet", "gla", "mamba2", "mesanet", "attention",
                        "attention_zoology"],
                dims=[64, 128, 256], lengths=[(256, 64), (512, 128), (1024, 256)], lrs=[1e-3, 3e-3, 1e-2],
                batch_size=256, head_dim=64,
            )  # fmt: skip
        else:
            base = dict(
                mixers=["attention", "gka"], dims=[32, 64], lengths=[(32, 4)], lrs=[3e-3], vocab_size=64, head_dim=16,
                steps=60, batch_size=32, warmup_steps=10, eval_examples=256, name="mqar_cpu_tiny",
            )  # fmt: skip
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def uses_cuda_graph(self, run: dict) -> bool:
        """Whether ``run`` (one of :meth:`runs`) trains with replayed CUDA graphs (``cuda_graph_mixers``)."""
        chosen = self.cuda_graph_mixers or []
        return "all" in chosen or run["mixer"] in chosen

    def heads_for(self, dim: int) -> int | None:
        """Heads of every mixer in a run of model dim ``dim``: ``num_heads`` when fixed, else ``dim // head_dim``
        (None: the mixers' own defaults, when neither is given)."""
        if self.num_heads is not None or not self.head_dim:
            return self.num_heads
        return max(1, dim // self.head_dim)

    def runs(self, rows: list[dict] | None = None) -> list[dict]:
        """One dict per training run (the row key fields), in sweep order: length, dim, mixer, lr, seed.

        An lr of ``"best"`` (``--lrs best``) stands for the cell's best lr among the finished ``rows`` (chosen on the
        cell's first seed, as the tables choose it): e.g. more seeds only where they matter. A cell with no finished
        row has no best lr yet and no run."""
        best = _best_lrs(rows or []) if BEST_LR in self.lrs else {}
        out = []
        for seq_len, pairs in self.lengths:
            for dim in self.dims:
                for mixer in self.mixers:
                    cell = dict(mixer=mixer, dim=dim, seq_len=seq_len, num_pairs=pairs, vocab_size=self.vocab_size,
                                steps=self.steps, batch_size=self.batch_size, num_layers=self.num_layers,
                                num_heads=self.heads_for(dim), head_dim=self.head_dim, curriculum=self.curriculum)  # fmt: skip
                    lrs = [best.get(_cell_key(cell)) if lr == BEST_LR else lr for lr in self.lrs]
                    for lr in dict.fromkeys(lr for lr in lrs if lr is not None):
                        for seed in self.seeds or [self.seed]:
                            out.append({**cell, "lr": lr, "seed": seed})
        return out


KEY_FIELDS = ("mixer", "dim", "seq_len", "num_pairs", "lr", "vocab_size", "steps", "batch_size", "num_layers", "num_heads", "head_dim", "seed", "curriculum")
BEST_LR = "best"


def _cell_key(row: dict) -> tuple:
    """A run's cell under its training settings: every key field but lr and seed."""
    return tuple(row.get(k) for k in KEY_FIELDS if k not in ("lr", "seed"))


def _best_lrs(rows: list[dict]) -> dict:
    """cell key -> the lr the tables choose for that cell (``best_per_cell``: best on the cell's first seed)."""
    cells: dict = {}
    for r in rows:
        cells.setdefault(_cell_key(r), []).append(r)
    out = {}
    for key, cell_rows in cells.items():
        best = best_per_cell(cell_rows)  # one cell: one row, or none when every run failed
        if not best.empty:
            out[key] = float(best["lr"].iloc[0])
    return out


def run_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def read_rows(path) -> list[dict]:
    """Rows of a sweep's JSONL; a line torn by a kill mid-write is skipped (that run is redone)."""
    from ..io import read_jsonl

    return read_jsonl(path)


def mqar_train_config(run: dict, sweep: SweepConfig):
    """(TrainConfig, base mixer, its options) of one sweep run: the exact training a row of the sweep records."""
    from ..train import TrainConfig

    base, opts = resolve_variant(run["mixer"])
    if base == "mamba2" and run["head_dim"] and "state_size" not in opts:
        # Mamba2's key width is its state size (default 128), not head_dim: with --head-dim D every mixer keys and
        # values at width D, and fla's kernels (guard lifted) run only at shapes `gkabench check --shapes D64` covered.
        opts = {**opts, "state_size": run["head_dim"]}
    tag = f"{run['mixer']}_d{run['dim']}_T{run['seq_len']}_P{run['num_pairs']}_lr{run['lr']:g}" + (f"_s{run['seed']}" if run["seed"] else "")
    eval_batches = max(1, -(-sweep.eval_examples // sweep.batch_size))
    cfg = TrainConfig(
        out_dir=str(sweep.runs_root() / tag), mixer=base, mixer_options={base: opts} if opts else {},
        **model_options(run), preset="tiny", hidden_size=run["dim"], num_layers=run["num_layers"], num_heads=run["num_heads"], head_dim=run["head_dim"],
        data="mqar", seq_len=run["seq_len"], mqar_vocab=run["vocab_size"], mqar_pairs=run["num_pairs"], mqar_curriculum=run["curriculum"],
        steps=run["steps"], batch_size=run["batch_size"], lr=run["lr"], warmup_steps=min(sweep.warmup_steps, run["steps"]),
        weight_decay=sweep.weight_decay, eval_every=min(sweep.check_every, run["steps"]) if sweep.early_stop_acc else run["steps"],
        eval_batches=eval_batches, log_every=max(1, run["steps"] // 50), early_stop_acc=sweep.early_stop_acc or None,
        save=False, resume=False, progress=False, seed=run["seed"], device=sweep.device,
        lift_fla_guard=sweep.lift_fla_guard,
        cuda_graph=sweep.uses_cuda_graph(run),
    )  # fmt: skip
    return cfg, base, opts


def train_mqar_run(run: dict, sweep: SweepConfig, concurrent_runs: int = 1) -> dict:
    """Train one 2-layer model on MQAR and return its result row (accuracy on fresh examples).

    ``concurrent_runs``: how many runs of the sweep share the device meanwhile (``--jobs``), recorded with
    ``elapsed_s`` (a run's time depends on it) and ``data_wait_s`` (of it, waiting for batches). ``started_at`` /
    ``finished_at`` (Unix seconds) say which runs overlapped: a step's time depends on what shared the GPU."""
    import time

    from ..env import environment
    from ..train import train

    cfg, base, opts = mqar_train_config(run, sweep)
    t0, started_at = time.perf_counter(), time.time()
    s = train(cfg)
    model = s.pop("model")
    return {
        **run, "base_mixer": base, "options": opts, "model_options": model_options(run), "accuracy": s["eval_acc"], "eval_loss": s["eval_loss"],
        "train_loss": s["loss"], "params": s["params"], "eval_examples": cfg.eval_batches * run["batch_size"],
        "steps_done": s["step"], "early_stop_acc": sweep.early_stop_acc or None,
        "state_bytes_per_layer": model.model.layers[0].mixer.state_bytes(run["seq_len"]),
        "elapsed_s": time.perf_counter() - t0, "env": environment(next(model.parameters()).device),
        "fla_guard_lifted": s.get("fla_guard_lifted", False), "elementwise": s.get("elementwise", "eager"),
        "cuda_graph": s.get("cuda_graph", "off"), "data_wait_s": s.get("data_wait_s"), "concurrent_runs": concurrent_runs,
        "started_at": round(started_at, 1), "finished_at": round(time.time(), 1),
    }  # fmt: skip


def current_rows(rows: list[dict], wanted: set) -> list[dict]:
    """One row per wanted run: its latest success, else its latest error (a retried run leaves both in the file)."""
    latest: dict = {}
    for r in rows:
        key = run_key(r)
        if key in wanted and (not r.get("error") or key not in latest or latest[key].get("error")):
            latest[key] = r
    return list(latest.values())


def _append_row_locked(jsonl, row: dict) -> None:
    """Append a finished run's row under an exclusive lock, so parallel workers (``--jobs``) or several sweep
    processes (``--shard``) never interleave their lines; a line torn by an earlier kill is ended first."""
    import fcntl

    from ..io import append_jsonl
    from ..train import ensure_fresh_line

    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl.with_name(jsonl.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ensure_fresh_line(jsonl)
            append_jsonl(jsonl, row)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train_or_error_row(run: dict, sweep: SweepConfig, concurrent_runs: int = 1) -> dict:
    """:func:`train_mqar_run`, or, when the run raises (OOM, divergence, a kernel refusing), an error row: the sweep
    goes on, the tables leave the run out, and a rerun tries it again. Ctrl-C still stops the sweep."""
    try:
        return train_mqar_run(run, sweep, concurrent_runs)
    except Exception as exc:  # noqa: BLE001 - recorded in the row, not swallowed
        import torch

        from ..env import environment

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an OOM must not starve the runs after it
        import traceback

        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        if isinstance(exc, torch.OutOfMemoryError):  # name the fix: the runs sharing the GPU share its memory too
            share = f" with {concurrent_runs} runs sharing the GPU" if concurrent_runs > 1 else ""
            msg = f"{msg[:200]} (out of GPU memory{share}; rerun this cell with --jobs 1 or a smaller --batch-size)"
        # the first line names the failure; a compiler's message continues on the next lines, so keep their end too
        detail = "".join(traceback.format_exception(exc))[-4000:]
        return {**run, "accuracy": None, "error": f"{type(exc).__name__}: {msg}", "error_detail": detail, "env": environment(None)}


def _worker_run(run: dict, sweep: SweepConfig, jsonl, threads: int, jobs: int = 1) -> dict:
    """One run in a worker process of ``--jobs``: train, append the row (locked), return it."""
    import torch

    from ..kernels.parallel_compile import enable_on_cuda

    torch.set_num_threads(threads)
    enable_on_cuda()  # a spawned worker does not run the CLI's entry point
    row = train_or_error_row(run, sweep, jobs)
    _append_row_locked(jsonl, row)
    return row


def _run_parallel(pending: list[dict], sweep: SweepConfig, jsonl, jobs: int, time_left, fits, on_run) -> None:
    """Keep ``jobs`` runs in flight in spawned workers (spawn, not fork: a forked child cannot use CUDA); submit
    the next only while ``time_left()``, passing over runs for which ``fits(run)`` is False. On an interrupt nothing
    new starts; the rows of finished runs are on disk."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # the cores this process may use (one sweep per GPU may each be pinned to a slice), shared by its workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    todo = iter(pending)
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn")) as pool:
        running = {}

        def submit_next() -> None:
            while time_left():
                run = next(todo, None)
                if run is None:
                    return
                if fits(run):
                    running[pool.submit(_worker_run, run, sweep, jsonl, threads, jobs)] = run
                    return

        for _ in range(jobs):
            submit_next()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = running.pop(fut)
                try:
                    row = fut.result()  # a worker's error surfaces here; rows already appended are kept
                except BrokenProcessPool:  # workers stopped by a signal (Ctrl-C, a deadline): nothing more can finish
                    raise KeyboardInterrupt(f"MQAR sweep stopped: {len(running) + 1} run(s) in flight were lost; the rows of finished runs are kept, rerun to resume") from None
                if on_run:
                    on_run(run, row)
                submit_next()


def _deadline_gate(deadline_file, jsonl, device):
    if deadline_file is None:
        return lambda run: True
    import torch

    from ..env import default_device, device_name
    from .mqar_schedule import DeadlineGate

    dev = torch.device(device) if device else default_device()
    return DeadlineGate(deadline_file, jsonl, {"device": device_name(dev), "device_type": dev.type})


def pending_runs(sweep: SweepConfig, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """The runs of ``sweep`` (this shard's share) with no finished row in ``out_dir/name.jsonl`` yet, in run order."""
    from pathlib import Path

    sweep.validate()
    done = {run_key(r) for r in read_rows(Path(sweep.out_dir) / f"{sweep.name}.jsonl") if not r.get("error")}
    return [run for run in shard_runs(sweep, shard) if run_key(run) not in done]


def unique_runs(sweep: SweepConfig) -> list[dict]:
    """``sweep.runs()`` with a run listed twice (e.g. ``--lrs 1e-2,1e-2``) kept once; ``--lrs best`` resolved
    from the finished rows in ``out_dir/name.jsonl``."""
    from pathlib import Path

    rows = read_rows(Path(sweep.out_dir) / f"{sweep.name}.jsonl") if BEST_LR in sweep.lrs else None
    return list({run_key(run): run for run in sweep.runs(rows)}.values())


def shard_runs(sweep: SweepConfig, shard: tuple[int, int]) -> list[dict]:
    """Shard ``(i, n)``'s share of the sweep's unique runs: runs i, i+n, ..."""
    return [run for k, run in enumerate(unique_runs(sweep)) if k % shard[1] == shard[0]]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> (1, 4): this process takes every 4th pending run starting at the 2nd (1-based, as typed)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 1 <= i <= n
    except (ValueError, AssertionError):
        raise ValueError(f"--shard: could not read {text!r}; pass I/N with 1 <= I <= N, e.g. --shard 1/2") from None
    return i - 1, n


def run_mqar_sweep(
    sweep: SweepConfig, on_run=None, jobs: int = 1, shard: tuple[int, int] = (0, 1), max_minutes: float | None = None,
    stop_file=None, deadline_file=None,
) -> list[dict]:
    """Run every run of ``sweep`` not yet in ``out_dir/name.jsonl``, appending each row when it finishes; then
    write ``name.md`` and ``name.png``. ``on_run(run, row_or_None)`` is called per run (row None = skipped).
    Returns all rows of the file that belong to this sweep.

    ``jobs > 1`` trains that many runs at once in worker processes on the same device (2-layer MQAR models use a
    small part of a big GPU, so runs in parallel finish sooner than one after another). ``shard = (i, n)`` takes only
    runs ``i, i+n, ...`` of the sweep (e.g. one process per GPU with ``CUDA_VISIBLE_DEVICES``); all of them append to
    the same JSONL under a lock, and a rerun resumes whatever is missing. ``max_minutes``: start no run after
    that long (runs in flight finish); the tables are written from what is done. ``stop_file``: likewise, start no
    run once this path exists (a sweep left running in the background is told to wind down by touching it).
    ``deadline_file``: once it exists it holds a Unix time, and only runs expected to finish before it start
    (:mod:`gkabench.tasks.mqar_schedule`: estimates from the finished rows of this machine's kind)."""
    import time
    from pathlib import Path

    t_start = time.monotonic()

    def time_left() -> bool:
        if stop_file is not None and Path(stop_file).exists():
            return False
        return max_minutes is None or time.monotonic() - t_start < 60 * max_minutes

    sweep.validate()
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
    for m in sweep.mixers:
        resolve_variant(m)
    for T, P in sweep.lengths:
        MQARConfig(vocab_size=sweep.vocab_size, seq_len=T, num_pairs=P)  # validates sizes up front
    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{sweep.name}.jsonl"
    done = {run_key(r) for r in read_rows(jsonl) if not r.get("error")}  # failed runs are tried again
    fits = _deadline_gate(deadline_file, jsonl, sweep.device)
    unique, mine = unique_runs(sweep), shard_runs(sweep, shard)
    pending = [run for run in mine if run_key(run) not in done]
    if jobs == 1:
        for run in mine:
            if run_key(run) in done:
                row = None
            elif not time_left():
                break
            elif not fits(run):
                continue
            else:
                row = train_or_error_row(run, sweep)
                # one line per finished run, fsynced: an interruption loses at most the run in flight
                _append_row_locked(jsonl, row)
            if on_run:
                on_run(run, row)
    else:
        if on_run:
            for run in mine:
                if run_key(run) in done:
                    on_run(run, None)
        if pending:
            _run_parallel(pending, sweep, jsonl, jobs, time_left, fits, on_run)
    all_rows = read_rows(jsonl)
    rows = current_rows(all_rows, {run_key(r) for r in unique})
    finished = {run_key(r) for r in rows if not r.get("error")}
    missing = [run for run in unique if run_key(run) not in finished]
    extra = other_seed_rows(all_rows, unique)
    title = f"MQAR ({sweep.name})"
    write_markdown(rows, out / f"{sweep.name}.md", title, missing=missing, seed_rows=extra)
    write_plot(rows, out / f"{sweep.name}.png", title, missing=missing, seed_rows=extra)
    return rows


def other_seed_rows(rows: list[dict], runs: list[dict]) -> list[dict]:
    """Finished rows of the cells of ``runs`` under seeds that ``runs`` do not train (e.g. the rows of a later
    ``--lrs best --seeds 1,2`` sweep when the seed-0 grid is rendered): the grid's table lists them beside its own
    (``write_markdown``'s ``seed_rows``) instead of hiding them. A row with no seed field is seed 0."""
    cells = {_cell_key(r) for r in runs}
    seeds = {r.get("seed") or 0 for r in runs}
    extra = {run_key(r) for r in rows if _cell_key(r) in cells and (r.get("seed") or 0) not in seeds}
    return [r for r in current_rows(rows, extra) if not r.get("error")]
