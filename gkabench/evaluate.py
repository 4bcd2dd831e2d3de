"""``gkabench eval``: long-context tasks (rag, longqa, niah) on a local model, and lm-eval tasks via the bridge.

    from gkabench.evaluate import EvalConfig, run_eval
    result = run_eval(EvalConfig(model="runs/lm/checkpoint", tasks="rag,niah", lengths=[4096, 8192], n=50))

For every (task, flavour, length) the rows come from :func:`gkabench.tasks.longctx.get_rows` (fitted with the
model's own tokenizer, cached on disk); the model answers them with greedy decoding:

- **Chunked prefill**: the prompt is fed ``chunk_size`` tokens at a time through the model's cache, so recurrent
  mixers hold constant memory however long the input (attention's KV cache grows, as it must); then one token
  per step until a newline, EOS or ``max_new_tokens``.
- **Batches** of rows of one length bucket are left-padded (``attention_mask`` marks real tokens; every gkabench
  mixer neutralises padding). An out-of-memory batch is retried one row at a time; a single row that does not
  fit raises a one-line error naming the fix, keeping the rows done.
- **Rows** are appended to ``<out>/<name>.jsonl`` as they finish (task, flavour, length, depth, prediction, gold,
  score, input tokens, seconds, peak GPU memory, environment). A rerun skips rows already there (resume) when
  they came from the same checkpoint (``model_fingerprint``), task generator and tokenizer; Ctrl-C keeps them. ``<out>/<name>.md`` and ``.csv`` summaries are rewritten atomically at the end (and on
  interruption).

``model`` may be a gkabench checkpoint or run directory, any local HF causal LM directory (loaded offline with
``AutoModelForCausalLM``, ``local_files_only=True``), or one of the reference readers ``oracle`` (answers from
the gold passage; should score 1.0) and ``closed-book`` (sees only the question; should score ~0).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .tasks.longctx import DEFAULT_DEPTHS, closed_book_answer, get_rows, load_data, oracle_answer, parse_tasks
from .tasks.scoring import clean_prediction, score_row

READERS = {"oracle": oracle_answer, "closed-book": closed_book_answer}
# Answer budgets in tokens of a subword tokenizer (HELMET: short answers; RULER niah: room for the values).
BASE_NEW_TOKENS = {"rag": 16, "longqa": 16, "niah": 48}
BYTES_PER_TOKEN = 3  # a byte-level tokenizer needs ~3x the tokens for the same answer


@dataclass
class EvalConfig:
    model: str
    tasks: str = "rag,longqa,niah"
    lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384, 32768, 65536, 131072])
    n: int = 50
    data: str | None = None
    batch_size: int = 1
    max_new_tokens: int | None = None  # None: per task (16 rag/longqa, 48 niah; x3 for a byte tokenizer)
    out: str = "results/eval"
    name: str | None = None
    device: str | None = None
    seed: int = 0
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    cache_dir: str | None = None
    chunk_size: int = 8192
    dtype: str | None = None  # bf16 on CUDA, fp32 on CPU
    progress: bool = True


@dataclass
class EvalResult:
    rows: list[dict]
    paths: list[Path]
    interrupted: bool = False
    summary: object = None  # pandas DataFrame


# --------------------------------------------------------------------------------------------------- model


def resolve_model_dir(model: str) -> Path:
    """A checkpoint directory (holding config.json), or a gkabench run directory holding ``checkpoint/``."""
    p = Path(model).expanduser()
    if (p / "config.json").is_file():
        return p
    if (p / "checkpoint" / "config.json").is_file():
        return p / "checkpoint"
    if not p.exists():
        raise FileNotFoundError(
            f"--model {p}: no such directory; pass a gkabench checkpoint / run dir, a local HF model dir, oracle or closed-book"
        )
    raise FileNotFoundError(
        f"--model {p}: no config.json there (nor in {p}/checkpoint); pass a directory written by save_pretrained"
    )


def model_name(model: str) -> str:
    if model in READERS:
        return model
    p = Path(model).expanduser().resolve()
    return p.parent.name if p.name == "checkpoint" else p.name


def load_model(model_dir: Path, device: torch.device, dtype: str | None = None):
    """(model in eval mode on ``device``, tokenizer); offline only. The tokenizer is the one saved with the model,
    else the byte tokenizer for a 259-token vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import models  # noqa: F401  (registers model_type "gkabench" with the Auto classes)
    from .tokenizers import BYTE_VOCAB_SIZE, load_tokenizer

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[dtype]
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
    model.to(device).eval()
    if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
        tok = load_tokenizer(model_dir)
    elif getattr(config, "vocab_size", None) == BYTE_VOCAB_SIZE:
        tok = load_tokenizer(None)
    else:
        raise FileNotFoundError(
            f"--model {model_dir}: no tokenizer saved there; save the tokenizer beside the model (tokenizer.save_pretrained)"
        )
    return model, tok


def _is_gkabench(model) -> bool:
    return getattr(model.config, "model_type", None) == "gkabench"


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, chunk_size: int = 8192, scores: list | None = None
) -> list[str]:
    """Greedy answers for token-id prompts (left-padded into one batch), prefilled ``chunk_size`` tokens at a time
    through the model's cache (``<= 0``: all at once); each answer stops at its first newline or EOS. Returns the
    generated texts.

    ``scores``: when a list, the next-token logits ``[B, V]`` (float32, CPU) of every step are appended to it."""
    device = next(model.parameters()).device
    B, T = len(prompts), max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    gk = _is_gkabench(model)
    import inspect

    # transformers 5 names the cache argument ``cache`` (``past_key_values`` is deprecated); older models differ.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # for HF models: positions count real tokens only

    def step(x, upto, cache):
        kw = {"input_ids": x, "attention_mask": mask_all[:, :upto], "use_cache": True, "logits_to_keep": 1}
        if gk:
            out = model(**kw, cache=cache)
            return out.logits[:, -1].float(), out.cache
        kw["position_ids"] = pos_all[:, upto - x.shape[1] : upto]
        out = model(**kw, **{cache_arg: cache})
        new_cache = getattr(out, "cache", None)
        return out.logits[:, -1].float(), new_cache if new_cache is not None else out.past_key_values

    mask_all = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
    pos_all = torch.cat([positions, positions[:, -1:] + torch.arange(1, max_new_tokens + 1, device=device)], dim=1)
    cache = None
    # chunk_size <= 0: one prefill call (attention then takes its causal flash path with no explicit mask).
    chunk = chunk_size if chunk_size > 0 else T
    for s in range(0, T, chunk):
        logits, cache = step(ids[:, s : s + chunk], min(T, s + chunk), cache)
    eos = tokenizer.eos_token_id
    out = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_new_tokens):
        if scores is not None:
            scores.append(logits.cpu())
        nxt = logits.argmax(-1)
        for i, tok in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if tok == eos:
                done[i] = True
                continue
            out[i].append(tok)
            if "\n" in tokenizer.decode(out[i][-4:]) and tokenizer.decode(out[i]).strip():
                done[i] = True  # a newline after some text ends the short answer
        if all(done) or t == max_new_tokens - 1:
            break
        logits, cache = step(nxt[:, None], T + t + 1, cache)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in out]


# ------------------------------------------------------------------------------------------------ running


def _row_key(r: dict, generator_version=None, tokenizer_hash=None) -> tuple:
    """What makes a row the same row for resume: which example (task, flavour, length, index, seed, source) under
    which task generator and tokenizer (a row from ``get_rows`` has neither yet: pass the current ones)."""
    return (
        r["task"], r["flavour"], int(r["length"]), int(r["index"]), int(r["seed"]), r.get("source"),
        r.get("generator_version", generator_version), r.get("tokenizer_hash", tokenizer_hash),
    )  # fmt: skip


def model_fingerprint(model_dir: Path | None, reader: str | None = None) -> str | None:
    """A cheap identity of a checkpoint: sha256 over config.json's bytes and, per weight file (safetensors / bin),
    its name, size and first and last MiB (a retrained or replaced checkpoint changes it; a copy does not).
    ``reader:<name>`` for a reference reader."""
    import hashlib

    if model_dir is None:
        return f"reader:{reader}" if reader else None
    h = hashlib.sha256()
    cfg = Path(model_dir) / "config.json"
    h.update(cfg.read_bytes() if cfg.is_file() else b"")
    weights = sorted(
        p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth")
    )
    for w in weights:
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with w.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def check_config(cfg: EvalConfig) -> None:
    """One-line ValueErrors for settings that would write nothing or only zero scores."""
    if cfg.n < 1:
        raise ValueError(f"--n {cfg.n}: rows per task flavour and length must be at least 1")
    if cfg.max_new_tokens is not None and cfg.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {cfg.max_new_tokens}: the answer budget must be at least 1 token")


def run_eval(cfg: EvalConfig, console=None) -> EvalResult:
    """Evaluate ``cfg.model`` on the long-context tasks; rows appended to ``<out>/<name>.jsonl`` as they finish."""
    from .env import default_device, environment
    from .io import append_jsonl, read_jsonl
    from .tasks.facts import GENERATOR_VERSION
    from .tasks.fitting import TokenCounter, format_length

    check_config(cfg)
    specs = parse_tasks(cfg.tasks)
    device = torch.device(cfg.device) if cfg.device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA device is visible; drop --device or use --device cpu")
    name = cfg.name or model_name(cfg.model)
    if cfg.data and not cfg.name:
        # Real-data rows get their own file (and model label), so reports never average them with generated ones.
        name = f"{name}@{Path(cfg.data).expanduser().resolve().name}"
    out_dir = Path(cfg.out)
    jsonl = out_dir / f"{name}.jsonl"
    reader = READERS.get(cfg.model)
    if reader is None:
        model_dir = resolve_model_dir(cfg.model)
        model, tok = load_model(model_dir, device, cfg.dtype)
        mixers = sorted(set(getattr(model.config, "mixer", None) or [getattr(model.config, "model_type", "?")]))
    else:
        from .tokenizers import load_tokenizer

        model_dir, model, tok, mixers = None, None, load_tokenizer(None), [cfg.model]
    counter = TokenCounter(tok)
    env = environment(device)
    fingerprint = model_fingerprint(model_dir, None if model_dir else cfg.model)
    # The same file may hold lm-eval rows (the bridge appends there too): only our tasks' rows count for resume,
    # and only those written by this checkpoint (fingerprint) under this generator and tokenizer (the key).
    done, stale = set(), 0
    for r in read_jsonl(jsonl):
        if r.get("task") in ("rag", "longqa", "niah") and "score" in r and "index" in r:
            same = r.get("model_fingerprint") == fingerprint
            same = same and r.get("generator_version") == GENERATOR_VERSION and r.get("tokenizer_hash") == counter.hash
            if same:
                done.add(_row_key(r))
            else:
                stale += 1
    if stale and console is not None:
        console.print(
            f"[yellow]{jsonl}: {stale} rows came from another checkpoint, task generator or tokenizer (or predate "
            f"checkpoint fingerprints); they are not reused: those rows are evaluated again[/yellow]",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
    all_rows: list[dict] = []
    interrupted = False
    progress = _progress(console, cfg.progress)
    try:
        with progress:
            for task, flavour in specs:
                data = load_data(task, flavour, cfg.data)
                for length in cfg.lengths:
                    label = f"{task}/{flavour} {format_length(length)}"
                    bar = progress.add_task(f"build {label}", total=cfg.n)
                    rows = get_rows(
                        task, flavour, length, cfg.n, cfg.seed, counter=counter, cache_dir=cfg.cache_dir,
                        depths=cfg.depths, data=data, progress=lambda i, b=bar: progress.advance(b),
                    )  # fmt: skip
                    todo = [r for r in rows if _row_key(r, GENERATOR_VERSION, counter.hash) not in done]
                    progress.update(bar, description=f"eval {label}", completed=cfg.n - len(todo), total=cfg.n)
                    new_tokens = _new_tokens(cfg, task, counter)
                    for batch in _batches(todo, cfg.batch_size):
                        for rec in _answer(batch, model, tok, reader, new_tokens, cfg, length, device):
                            rec.update(model=name, model_dir=str(model_dir) if model_dir else None, mixers=mixers,
                                       generator_version=GENERATOR_VERSION, tokenizer_hash=counter.hash,
                                       model_fingerprint=fingerprint, max_new_tokens=new_tokens, env=env)  # fmt: skip
                            append_jsonl(jsonl, rec)
                            all_rows.append(rec)
                            done.add(_row_key(rec))
                            progress.advance(bar)
    except KeyboardInterrupt:
        interrupted = True
    paths = [jsonl] if jsonl.exists() else []
    summary = None
    if jsonl.exists():
        summary, extra = write_summary(jsonl)
        paths += extra
    return EvalResult(all_rows, paths, interrupted, summary)


def _new_tokens(cfg: EvalConfig, task: str, counter) -> int:
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    return BASE_NEW_TOKENS[task] * (BYTES_PER_TOKEN if counter.bytes_fast else 1)


def _batches(rows: list[dict], size: int):
    for i in range(0, len(rows), max(1, size)):
        yield rows[i : i + max(1, size)]


def _record(row: dict, raw: str, seconds: float, peak: float | None, batch: int) -> dict:
    pred = clean_prediction(raw, row.get("answer_prefix"))
    return {
        "task": row["task"], "flavour": row["flavour"], "length": row["length"], "depth": row["depth"],
        "index": row["index"], "seed": row["seed"], "source": row.get("source"), "prediction": pred, "raw": raw,
        "gold": row["answers"], "score": score_row(row["task"], pred, row["answers"]),
        "input_tokens": row["input_tokens"], "time_s": round(seconds, 4), "peak_mem_gib": peak, "batch_size": batch,
    }  # fmt: skip


# models that have run one untimed generation in this process (weak: a model loaded later gets its own); see _warm_up
_WARMED = weakref.WeakSet()


def _warm_up(model, tok, prompt: list[int], chunk_size: int) -> None:
    """One untimed generation per model and process before the first timed one, so that the seconds per example
    measure the model, not Triton compiling and autotuning its kernels (session 4: GKA's first 4k example took
    longer than its 8k ones). The prompt spans more than one prefill chunk and a few decode steps, the paths every
    timed example takes: full prefill chunks continuing a cached state, a ragged last chunk, decode steps."""
    if model in _WARMED:
        return
    _WARMED.add(model)
    step = min(chunk_size, 1024) if chunk_size > 0 else 1024
    generate(model, tok, [prompt[: 2 * step + 17]], 3, step if chunk_size > 0 else chunk_size)


def _answer(batch, model, tok, reader, new_tokens, cfg, length, device) -> list[dict]:
    if reader is not None:
        return [_record(r, reader(r), 0.0, None, 1) for r in batch]
    prompts = [tok(r["prompt"], add_special_tokens=True)["input_ids"] for r in batch]
    if device.type == "cuda":  # on CPU nothing compiles (and the timings are not the point there)
        _warm_up(model, tok, prompts[0], cfg.chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    oom = False
    try:
        texts = generate(model, tok, prompts, new_tokens, cfg.chunk_size)
    except torch.OutOfMemoryError:
        oom = True  # handled below, outside the except: its traceback holds the failed batch's tensors alive
    if oom:
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) > 1:  # retry one row at a time before giving up
            return [rec for r in batch for rec in _answer([r], model, tok, reader, new_tokens, cfg, length, device)]
        raise ValueError(
            f"out of memory at {length} tokens (batch 1, prefill chunk {cfg.chunk_size}); pass a smaller --chunk-size or "
            f"drop this length from --lengths (rows done are kept; rerun resumes)"
        ) from None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / len(batch)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
    return [_record(r, t, seconds, peak, len(batch)) for r, t in zip(batch, texts, strict=True)]


def _progress(console, enabled: bool):
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:

        class _Quiet(nullcontext):
            def add_task(self, *a, **k):
                return 0

            def advance(self, *a, **k):
                pass

            def update(self, *a, **k):
                pass

        return _Quiet()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


# ------------------------------------------------------------------------------------------------ summary


def _identity(r: dict) -> tuple:
    """What produced a row: checkpoint fingerprint, task generator version, tokenizer hash."""
    return (r.get("model_fingerprint"), r.get("generator_version"), r.get("tokenizer_hash"))


def summarize(rows: list[dict]):
    """Per (task, flavour, length): mean score (x100), rows, mean input tokens, mean seconds, max peak GiB.
    Returns a pandas DataFrame, plus per-task averages over flavours as flavour ``avg``. Only rows written by the
    same checkpoint, generator and tokenizer as the last row count (a retrained model's old rows are left out)."""
    import pandas as pd

    ours = [r for r in rows if r.get("task") in ("rag", "longqa", "niah") and "score" in r]
    if ours:  # only the latest checkpoint / generator / tokenizer's rows: older ones are stale, not comparable
        latest = _identity(ours[-1])
        ours = [r for r in ours if _identity(r) == latest]
    df = pd.DataFrame(ours)
    if df.empty:
        return df
    df = df.drop_duplicates(subset=["task", "flavour", "length", "index", "seed", "source"], keep="last")
    g = df.groupby(["task", "flavour", "length"], sort=True)
    out = g.agg(
        score=("score", "mean"), n=("score", "size"), input_tokens=("input_tokens", "mean"), time_s=("time_s", "mean")
    )
    out["peak_mem_gib"] = g["peak_mem_gib"].max() if "peak_mem_gib" in df else None
    out["score"] *= 100
    out = out.reset_index()
    avg = out.groupby(["task", "length"], as_index=False).agg(
        score=("score", "mean"),
        n=("n", "sum"),
        input_tokens=("input_tokens", "mean"),
        time_s=("time_s", "mean"),
        peak_mem_gib=("peak_mem_gib", "max"),
    )
    avg["flavour"] = "avg"
    return pd.concat([out, avg[out.columns]], ignore_index=True).sort_values(
        ["task", "flavour", "length"], ignore_index=True
    )


def write_summary(jsonl: Path) -> tuple[object, list[Path]]:
    """Rewrite ``<stem>.csv`` (long form) and ``<stem>.md`` (scores: rows task/flavour, columns lengths; then
    time and memory per length) from every row of ``jsonl``, atomically."""
    from .io import read_jsonl, write_text_atomic
    from .tasks.fitting import format_length

    rows = read_jsonl(jsonl)
    df = summarize(rows)
    csv_path, md_path = jsonl.with_suffix(".csv"), jsonl.with_suffix(".md")
    if df.empty:
        return df, []
    write_text_atomic(csv_path, df.to_csv(index=False, float_format="%.4g"))
    wide = df.pivot_table(index=["task", "flavour"], columns="length", values="score", sort=True)
    wide.columns = [format_length(int(c)) for c in wide.columns]
    cost = (
        df[df.flavour == "avg"]
        .groupby("length")
        .agg(time_s=("time_s", "mean"), peak_mem_gib=("peak_mem_gib", "max"), input_tokens=("input_tokens", "mean"))
    )
    cost.index = [format_length(int(c)) for c in cost.index]
    ours = [r for r in rows if r.get("task") in ("rag", "longqa", "niah")]
    env = next((r.get("env") for r in reversed(ours) if r.get("env")), {}) or {}
    last = ours[-1] if ours else {}
    lines = [
        f"# {jsonl.stem}: long-context evaluation",
        "",
        (
            f"Model `{last.get('model_dir') or last.get('model')}` (mixers: {', '.join(last.get('mixers') or [])}); "
            f"device {env.get('device')}; git {env.get('git_sha')}; generator {last.get('generator_version')}."
        ),
        "Scores x100: rag / longqa SubEM (SQuAD-normalised substring match), niah fraction of needle values recalled.",
        "",
        wide.reset_index().to_markdown(index=False, floatfmt=".1f"),
        "",
        "Seconds per row (prefill + decode) and peak GPU memory (GiB) by length:",
        "",
        cost.reset_index(names="length").to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Command: `{env.get('command', '')}`",
        "",
    ]
    write_text_atomic(md_path, "\n".join(lines))
    return df, [csv_path, md_path]


# ------------------------------------------------------------------------------------------------ lm-eval


def run_lm_eval_tasks(
    model: str,
    tasks: list[str],
    data: str | None,
    limit: int | None,
    batch_size: int,
    device: str | None,
    out: str,
    name: str | None,
) -> tuple[dict, Path]:
    """lm-eval tasks through the bridge (``gkabench.lm_eval_bridge.run_lm_eval``); the result dict is written to
    ``<out>/<name>.lm_eval.json`` atomically and returned."""
    import json

    from .io import write_text_atomic

    try:
        from .lm_eval_bridge import run_lm_eval
    except ImportError as exc:
        raise ValueError(
            f"lm-eval tasks need gkabench/lm_eval_bridge.py (run_lm_eval), not importable here ({exc}); update gkabench or run rag/longqa/niah only"
        ) from None
    import inspect

    model_dir = resolve_model_dir(model)
    # The bridge may also take where to append its rows and the model's name: give it ours when it does.
    accepted = inspect.signature(run_lm_eval).parameters
    extra = {k: v for k, v in (("results_dir", out), ("name", name)) if k in accepted and v is not None}
    result = run_lm_eval(str(model_dir), tasks, data, limit, batch_size, device, **extra)
    path = Path(out) / f"{name or model_name(model)}.lm_eval.json"
    write_text_atomic(path, json.dumps(result, indent=1, default=str))
    return result, path
