"""Training loop for gkabench causal LMs (any mixer pattern), on MQAR or local text, one process or DDP.

    from gkabench.train import TrainConfig, train
    summary = train(TrainConfig(out_dir="runs/x", mixer="gka", preset="tiny", data="mqar", steps=500))

What it does, in the order a reader meets it below:

- **Data** are indexed, not streamed: optimizer step ``s`` always sees the same global batch of ``batch_size``
  sequences, split into ``grad_accum x world_size`` micro-batches (micro-batch ``m`` of rank ``r`` is part
  ``m * world + r``). So a resumed run sees exactly the batches an uninterrupted one would, and 2 ranks see what
  1 rank with twice the accumulation sees. Sources (:mod:`gkabench.data`): ``mqar`` (fresh examples per step,
  seeded by (seed, step)), ``facts`` (generated long-context documents) and local ``.txt`` / ``.jsonl`` /
  ``.json`` files read with ``datasets``: documents are tokenized, joined with EOS, cut into ``seq_len`` chunks
  and, with ``packing`` (default), a micro-batch is one row ``[1, micro * seq_len]`` with ``cu_seqlens`` at every
  document and chunk boundary, so no document attends to another.
- **Optimisation**: AdamW (no weight decay on vectors and on parameters marked ``_no_weight_decay``), linear
  warm-up then cosine decay to ``min_lr_ratio * lr`` (transformers' scheduler), gradient clipping, bf16 autocast
  on CUDA only (float32 on CPU), gradient accumulation (DDP gradient sync only on the last micro-batch).
- **Checkpoints** in ``out_dir/checkpoint``: the model (safetensors, loadable with ``AutoModelForCausalLM``),
  the tokenizer, and ``trainer_state.pt`` (optimizer, scheduler, RNG states, step, tokens). Written to a temp
  dir and renamed into place, so an interrupted write never leaves a half checkpoint. A new run in a directory
  that holds a checkpoint resumes from it (``resume=False`` starts over).
- **Logs**: ``out_dir/log.jsonl`` (one header row with the environment and config, then one row per
  ``log_every`` steps and per eval), a rich progress bar with loss and tokens/s. Only rank 0 writes.
- **DDP**: under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is set up from the
  environment (gloo on CPU, nccl on CUDA) and the model wrapped in ``DistributedDataParallel``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data import FactsSource, MQARSource, TextSource, build_source, tokenize_files  # noqa: F401 - re-exported
from .tasks.mqar import MQARConfig, mqar_accuracy

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"
LOG_FILE = "log.jsonl"


@dataclass
class TrainConfig:
    out_dir: str
    # model
    mixer: str = "gka"  # one name or a pattern, e.g. "gka,gka,gka,attention"
    preset: str = "tiny"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    mixer_options: dict = field(default_factory=dict)  # {"gka": {"use_alpha": False}}
    learned_positions: int = 0  # > 0: learned absolute position embeddings for this many tokens (GKABenchConfig)
    embed_dropout: float = 0.0  # dropout on the input embeddings while training (GKABenchConfig)
    backend: str = "auto"
    # data
    data: str = "mqar"  # "mqar", "facts" (generated long-context documents) or comma-separated local .txt / .jsonl / .json files
    eval_data: str | None = None  # text only; default: hold out the last chunks of data
    text_field: str = "text"
    tokenizer: str | None = None  # None: byte-level; or a local tokenizer.json / directory
    seq_len: int = 256
    packing: bool = True  # text: documents packed with cu_seqlens (no cross-document attention)
    mqar_vocab: int = 8192
    mqar_pairs: int = 64
    mqar_queries: int | None = None
    mqar_curriculum: bool = False  # train on Zoology's mixture of easier pair counts too (eval on the target only)
    facts_questions: int = 1  # --data facts: questions per rag document (more answers to read per context)
    # optimisation
    steps: int = 1000
    batch_size: int = 64  # sequences per optimizer step, over all ranks and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    device: str | None = None  # default: cuda (this rank's GPU) when present, else cpu
    # run fla's gated backward despite its Hopper guard (Triton < 3.7.1); only after `gkabench check` passed at
    # the shapes used. Recorded in the log's start event as fla_guard_lifted.
    lift_fla_guard: bool = False
    # bookkeeping
    eval_every: int = 100
    eval_batches: int = 4
    log_every: int = 10
    save_every: int = 200  # 0: only at the end; checkpoints off entirely with save=False
    save: bool = True
    resume: bool = True
    progress: bool = True
    stop_at: int | None = None  # stop after this step as if interrupted (checkpoint written first); for tests
    max_minutes: float | None = None  # stop (checkpoint first) once this much wall time has passed; rerun resumes
    # stop once a periodic evaluation reaches this MQAR accuracy (the MQAR sweep: a solved run needs no more steps)
    early_stop_acc: float | None = None
    # replay each step as one captured CUDA graph after a few eager steps (gkabench.train_graph: small models are
    # host-bound); one process, MQAR data, no accumulation, else eager with the reason in the log's end event
    cuda_graph: bool = False

    def mqar(self) -> MQARConfig:
        return MQARConfig(vocab_size=self.mqar_vocab, seq_len=self.seq_len, num_pairs=self.mqar_pairs, num_queries=self.mqar_queries)

    def to_dict(self) -> dict:
        return asdict(self)

    # counts that must be >= 1 (or >= 0), with the command-line option that sets each
    _AT_LEAST = (("steps", "--steps", 1), ("batch_size", "--batch-size", 1), ("grad_accum", "--grad-accum", 1),
                 ("log_every", "--log-every", 1), ("seq_len", "--seq-len", 2), ("eval_every", "--eval-every", 0),
                 ("save_every", "--save-every", 0), ("warmup_steps", "--warmup", 0), ("eval_batches", "eval_batches", 1))  # fmt: skip

    def validate(self) -> None:
        """One-line ValueErrors for impossible counts (a zero batch, accumulation or log interval)."""
        for name, option, lo in self._AT_LEAST:
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{option} must be an integer >= {lo}, got {v!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size {self.batch_size} must be divisible by --grad-accum {self.grad_accum}")


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group (and tear it down)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_hint: str | None) -> tuple[Dist, torch.device]:
    """Process group from the torchrun environment (gloo on CPU, nccl on CUDA) and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_hint:
        device = torch.device(device_hint)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for but no CUDA device is visible; drop --device or use --device cpu")
    else:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    d = Dist(rank, world, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        d.owns_group = True
    return d, device


# ----------------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int, tokenizer):
    from .models import GKABenchForCausalLM, preset_config

    model_fields = ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size", "learned_positions", "embed_dropout")
    overrides = {k: getattr(cfg, k) for k in model_fields if getattr(cfg, k) is not None}
    if cfg.hidden_size is not None and cfg.intermediate_size is None:
        overrides["intermediate_size"] = None  # let the config derive it from the new hidden size
    special = {}
    if cfg.data != "mqar":
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    mcfg = preset_config(
        cfg.preset, mixer=cfg.mixer, mixer_options=cfg.mixer_options, vocab_size=vocab_size, backend=cfg.backend, **overrides, **special
    )
    return GKABenchForCausalLM(mcfg)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; vectors (norms, biases, gates) and ``_no_weight_decay`` params get none."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, model, tokenizer, trainer_state: dict) -> Path:
    """Write ``out_dir/checkpoint`` atomically: everything goes to a temp dir that is then renamed into place."""
    final = out_dir / CHECKPOINT
    tmp, old = out_dir / f".{CHECKPOINT}.tmp", out_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint in ``out_dir`` (the previous one if a crash hit between the two renames)."""
    for cand in (out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"):
        if (cand / STATE_FILE).exists():
            return cand
    return None


# ------------------------------------------------------------------------------------------------------- log


class JsonlLog:
    """Append-only JSONL log (rank 0). On resume, rows past the checkpoint's step are dropped (they will be
    redone), so the log of a resumed run reads like that of an uninterrupted one."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.exists():
            from .io import read_jsonl

            rows = read_jsonl(path)  # a line torn by a kill mid-write is dropped, not a resume blocker
            keep = [r for r in rows if r.get("step", -1) <= keep_until_step or r.get("event") == "start"]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            tmp.replace(path)

    def write(self, row: dict) -> None:
        if self.enabled:
            ensure_fresh_line(self.path)
            with self.path.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")


def ensure_fresh_line(path: Path) -> None:
    """If ``path`` ends inside a line (a write cut by a kill), end that line, so the next row appended starts on a
    line of its own instead of being glued to the torn one (readers then skip only the torn line)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except FileNotFoundError:
        return
    if last != b"\n":
        with path.open("ab") as f:
            f.write(b"\n")


# ------------------------------------------------------------------------------------------------------ loop


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
    )  # fmt: skip


@torch.no_grad()
def evaluate(model, source, cfg: TrainConfig, device, autocast) -> dict:
    """Mean loss over ``eval_batches`` held-out batches (and MQAR accuracy)."""
    model.eval()
    losses, correct, total = [], 0, 0
    for i in range(cfg.eval_batches):
        b = source.micro_batch(i, 0, 1, cfg.batch_size, split="eval")
        b = {k: v.to(device) for k, v in b.items()}
        with autocast:
            out = model(**b, use_cache=False)
        losses.append(out.loss.item())
        if isinstance(source, MQARSource):
            c, t = mqar_accuracy(out.logits, b["labels"])
            correct, total = correct + c, total + t
    model.train()
    res = {"eval_loss": float(np.mean(losses))}
    if isinstance(source, MQARSource):
        res["eval_acc"] = correct / max(total, 1)
    return res


# Settings a resumed run must share with the checkpoint: the model, the data and their order.
RESUME_MUST_MATCH = (
    "mixer", "preset", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size", "mixer_options",
    "learned_positions", "embed_dropout", "data", "text_field", "tokenizer", "seq_len", "packing", "mqar_vocab", "mqar_pairs", "mqar_queries", "mqar_curriculum", "facts_questions",
    "batch_size", "seed",
)  # fmt: skip


def _check_resumable(cfg: TrainConfig, saved: dict, out: Path) -> None:
    diff = [k for k in RESUME_MUST_MATCH if k in saved and saved[k] != getattr(cfg, k)]
    if diff:
        what = ", ".join(f"{k}={saved[k]!r} there vs {getattr(cfg, k)!r} now" for k in diff)
        raise ValueError(f"{out} holds a run with other settings ({what}); use another --out, or --no-resume to start over")


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) per ``cfg``; returns a summary dict (final step, losses, eval metrics, tokens/s)."""
    from transformers.utils import logging as hf_logging

    from .env import environment
    from .tokenizers import load_tokenizer

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar would cut through our own progress bar

    d, device = setup_distributed(cfg.device)
    try:
        return _train(cfg, d, device, load_tokenizer, environment)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, device: torch.device, load_tokenizer, environment) -> dict:
    cfg.validate()
    parts = cfg.grad_accum * d.world
    if cfg.batch_size % parts:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum x world size = {parts}")
    out = Path(cfg.out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.tokenizer)
    source = build_source(cfg, tokenizer)
    guard_lifted = False
    if cfg.lift_fla_guard:
        from .layers import fla_guard
        from .layers.fla_guard import lift_fla_hopper_guard

        # the first lift in a process flips fla's flag, so later calls see no active guard: GUARD_LIFTED remembers
        guard_lifted = lift_fla_hopper_guard() or fla_guard.GUARD_LIFTED

    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    ckpt = find_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        _check_resumable(cfg, torch.load(ckpt / STATE_FILE, weights_only=False, map_location="cpu")["config"], out)
        from .models import GKABenchForCausalLM

        model = GKABenchForCausalLM.from_pretrained(ckpt)
    else:
        model = build_model(cfg, source.vocab_size, tokenizer)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())

    from .train_graph import WARMUP_STEPS, GraphedStep, graph_unsupported, pad_loss_positions

    graph_off = graph_unsupported(cfg, d.world, device) if cfg.cuda_graph else "not asked"
    if cfg.cuda_graph and graph_off and d.main:
        print(f"--cuda-graph: {graph_off}; training eagerly")
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            fused=device.type == "cuda", capturable=graph_off is None)  # fmt: skip
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.steps), cfg.steps, min_lr_rate=cfg.min_lr_ratio)
    step, tokens_seen, last_restored = 0, 0, None
    if ckpt is not None:
        state = torch.load(ckpt / STATE_FILE, weights_only=False, map_location="cpu")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0])
        step, tokens_seen = state["step"], state["tokens"]
        last_restored = state.get("last")

    ddp_model = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Ablations leave parameters unused (GKA with use_decay=False never touches a_proj / A_log / dt_bias);
        # DDP must then be told to look for them, at the cost of one graph walk per step.
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    # A captured step runs autocast without its weight-cast cache (casts made at capture would be replayed stale);
    # the eager warm-up steps before it use the same setting, so compiled code sees one autocast state throughout.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=graph_off is not None) if device.type == "cuda" else nullcontext()

    log = JsonlLog(out / LOG_FILE, d.main, keep_until_step=step if ckpt is not None else None)
    if ckpt is None and d.main and (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run in an old directory starts a fresh log
    log.write({"event": "start", "resumed_from": step if ckpt is not None else None, "params": n_params,
               "world_size": d.world, "config": cfg.to_dict(), "env": environment(device),
               "fla_guard_lifted": guard_lifted})  # fmt: skip

    saved = {"step": step if ckpt is not None else None}

    def checkpoint():
        saved["step"] = step
        states = [None] * d.world
        st = rng_state()
        if d.world > 1:
            dist.all_gather_object(states, st)
        else:
            states = [st]
        if d.main:
            save_checkpoint(out, model, tokenizer, {
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": states,
                "step": step, "tokens": tokens_seen, "config": cfg.to_dict(), "last": last,
            })  # fmt: skip
        if d.world > 1:
            dist.barrier()

    tokens_per_step = cfg.batch_size * cfg.seq_len
    last = dict(last_restored or {"loss": float("nan")})
    from .models.modeling import loss_positions_of

    t_start, t_window, tok_window = time.perf_counter(), time.perf_counter(), 0
    # time spent waiting for batches (MQAR's generator threads): a step bound by data, not by the GPU, shows here
    wait_window = getattr(source, "wait_s", 0.0)
    start_step = step
    graphed, graph_note = None, f"off: {graph_off}" if graph_off else "off: not captured (run shorter than the warm-up)"
    side = torch.cuda.Stream(device) if graph_off is None else None  # warm-up before a capture runs on a side stream
    end = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)

    def eager_step():
        """One optimizer step, eagerly: every micro-batch's forward and backward, clip, AdamW, schedule."""
        loss_sum = torch.zeros((), device=device)
        for m in range(cfg.grad_accum):
            b = source.micro_batch(step, m * d.world + d.rank, parts, cfg.batch_size)
            # the LM head only where a target counts (MQAR: one token in four), found on the CPU copy (no sync)
            positions = loss_positions_of(b["labels"]) if "labels" in b else None
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            if positions is not None:
                b["loss_positions"] = positions
            sync = m == cfg.grad_accum - 1 or d.world == 1
            with (ddp_model.no_sync() if (d.world > 1 and not sync) else nullcontext()), autocast:
                loss = ddp_model(**b, use_cache=False).loss / cfg.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, grad_norm

    def graph_batch(at: int) -> dict:
        """Step ``at``'s batch (CPU) in a graph's fixed shapes: scored positions padded to the most any batch has."""
        b = source.micro_batch(at, 0, 1, cfg.batch_size)
        capacity, sentinel = source.max_scored_targets(cfg.batch_size), cfg.batch_size * (cfg.seq_len - 1)
        return {**b, "loss_positions": pad_loss_positions(loss_positions_of(b["labels"]), capacity, sentinel)}

    def capture_step(next_step: int):
        """(GraphedStep, note) from the next batch's shapes, or (None, why not) if the capture fails."""
        try:
            g = GraphedStep(model, opt, cfg.grad_clip, graph_batch(next_step))
        except Exception as exc:  # noqa: BLE001 - a failed capture is reported and the run goes on eagerly
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if d.main:
                print(f"--cuda-graph: capture failed ({why}); training eagerly")
            opt.zero_grad(set_to_none=True)
            return None, f"off: capture failed ({why})"
        return g, f"on from step {next_step + 1}"

    with _progress(cfg.progress and d.main) as prog:
        task = prog.add_task(f"train {cfg.mixer}", total=cfg.steps, completed=step, loss="-", tps="-")
        while step < end:
            if graphed is not None:
                loss_sum, grad_norm = graphed(graph_batch(step))
                sched.step()
            else:
                if side is not None:
                    side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side) if side is not None else nullcontext():
                    loss_sum, grad_norm = eager_step()
                if side is not None:
                    torch.cuda.current_stream(device).wait_stream(side)
                if side is not None and step + 1 - start_step >= WARMUP_STEPS and step + 1 < end:
                    graphed, graph_note = capture_step(step + 1)
                    side = None
            step += 1
            tokens_seen += tokens_per_step
            tok_window += tokens_per_step
            if d.world > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
                if dist.get_backend() != "nccl":
                    loss_sum /= d.world
            # Reading the loss waits for the GPU: only on steps that log or checkpoint, so that on other steps the
            # host queues the next step's kernels while the GPU runs this one (small models are launch-bound).
            saving = cfg.save and bool(cfg.save_every) and step % cfg.save_every == 0
            if step % cfg.log_every == 0 or step == end or saving:
                last = {"loss": loss_sum.item()}
                if not math.isfinite(last["loss"]):
                    log.write({"step": step, "event": "diverged", "loss": last["loss"]})
                    kept = (f"the checkpoint of step {saved['step']} in {out} is kept" if saved["step"] is not None
                            else "no checkpoint was written")  # fmt: skip
                    raise ValueError(f"training diverged: loss is {last['loss']} at step {step} ({kept}); rerun with a "
                                     f"lower --lr than {cfg.lr:g} or a longer --warmup than {cfg.warmup_steps}, with "
                                     "--no-resume or another --out (a resume keeps the saved learning-rate schedule)")  # fmt: skip
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                tps = tok_window / max(now - t_window, 1e-9)
                t_window, tok_window = now, 0
                row = {"step": step, "loss": last["loss"], "lr": sched.get_last_lr()[0], "tokens": tokens_seen,
                       "tokens_per_s": tps, "elapsed_s": now - t_start}  # fmt: skip
                if hasattr(source, "wait_s"):
                    row["data_wait_s"], wait_window = source.wait_s - wait_window, source.wait_s
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                log.write(row)
                prog.update(task, loss=f"{last['loss']:.4f}", tps=f"{tps:,.0f}")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                if d.main:
                    ev = evaluate(model, source, cfg, device, autocast)
                    last.update(ev)
                    log.write({"step": step, **ev})
                if d.world > 1:
                    dist.barrier()
                if cfg.early_stop_acc is not None:
                    solved = torch.tensor(float(last.get("eval_acc", -1.0) >= cfg.early_stop_acc), device=device)
                    if d.world > 1:  # rank 0 evaluated: its verdict holds for every rank
                        dist.broadcast(solved, src=0)
                    if solved.item() and step < end:
                        log.write({"step": step, "event": "early_stop", "eval_acc": last.get("eval_acc")})
                        end = step
            if cfg.max_minutes is not None and step < end:
                over = torch.tensor(float(time.perf_counter() - t_start > 60 * cfg.max_minutes), device=device)
                if d.world > 1:  # rank 0's clock decides, so every rank stops at the same step
                    dist.broadcast(over, src=0)
                if over.item():
                    end = step  # checkpoint below, then leave the loop as an interrupted run would
            if cfg.save and ((cfg.save_every and step % cfg.save_every == 0) or step == end):
                checkpoint()
            prog.update(task, completed=step)

    elapsed = time.perf_counter() - t_start
    if hasattr(source, "close"):
        source.close()  # its batch threads are not needed any more (a sweep worker trains many runs in turn)
    summary = {"step": step, "finished": step >= cfg.steps, "params": n_params, "tokens": tokens_seen,
               "elapsed_s": elapsed, "out_dir": str(out), **last}  # fmt: skip
    if hasattr(source, "wait_s"):
        summary["data_wait_s"] = source.wait_s  # of elapsed_s, waiting for batches (see MQARSource.prefetch)
    if guard_lifted:
        summary["fla_guard_lifted"] = True
    if cfg.cuda_graph:
        summary["cuda_graph"] = graph_note  # "on from step N", or "off: why"
    if device.type == "cuda":
        from .layers.blocks import short_conv_impl
        from .layers.fused import fused_impl

        summary["short_conv"] = short_conv_impl()  # fla's conv, or the PyTorch fallback after a failure
        summary["elementwise"] = fused_impl()  # norms and gates compiled (fused) or eager
    if d.main and step >= cfg.steps and step > start_step:
        log.write({"event": "end", **summary})
    summary["model"] = model
    return summary
