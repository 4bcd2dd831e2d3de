"""lm-evaluation-harness on gkabench checkpoints, offline.

Three ways in:

    # 1. Python (what ``gkabench eval --task lm-eval:arc_easy,piqa`` calls); rows go to results/eval/<model>.jsonl
    from gkabench.lm_eval_bridge import run_lm_eval
    run_lm_eval("runs/gka/checkpoint", ["arc_easy", "piqa"], data_dir="lm_eval_data", limit=100)

    # 2. lm-eval's own CLI, with gkabench imported first (registers the model type and the ``gkabench`` LM)
    python -m gkabench.lm_eval_bridge run --model hf --model_args pretrained=DIR --tasks arc_easy
    python -m gkabench.lm_eval_bridge run --model gkabench --model_args pretrained=DIR --batch_size 8 --tasks arc_easy

    # 3. any script: ``import gkabench`` then lm_eval.simple_evaluate(model="hf" or "gkabench", ...)

The ``gkabench`` LM (:class:`GKABenchLM`) loads any local causal LM directory with ``AutoModelForCausalLM``
(gkabench checkpoints and plain HF ones, ``local_files_only``), falls back to the byte tokenizer when a
259-token model has no tokenizer files, scores log-likelihoods on right-padded batches without any cache
(``use_cache=False``: nothing assumes a KV cache), and generates greedily through ``model.generate`` with left
padding and an attention mask (our recurrent :class:`~gkabench.models.GKABenchCache` underneath). It has no
length limit of its own (recurrent mixers have none) unless ``max_length`` is given.

Data: every call here runs with ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``. A task's dataset comes from the
HF datasets cache, or from ``data_dir``: ``DIR/<dataset path>`` (e.g. ``DIR/allenai/ai2_arc``; also
``DIR/allenai__ai2_arc`` or ``DIR/ai2_arc``) holding a copy of the dataset repository (parquet/json files, as
``huggingface-cli download --repo-type dataset allenai/ai2_arc --local-dir DIR/allenai/ai2_arc`` writes it) or a
``save_to_disk`` copy (``dataset_dict.json``, optionally under a subfolder named after the dataset config). A
missing dataset is a one-line ValueError naming it and these two ways to provide it.

Tasks: lm-eval's own, plus YAML tasks in ``gkabench/tasks/lm_eval/`` (always on the include path) and any
``include_path`` given. Relative ``data_files`` of a ``dataset_path: json`` (csv, parquet, text) task resolve
against the current directory first, then the include folders, so such tasks travel with their data.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM

TASKS_DIR = Path(__file__).resolve().parent / "tasks" / "lm_eval"

from .report import PAPER_SHORT_TASKS

PAPER_TASKS = PAPER_SHORT_TASKS  # the paper's 10 short-context tasks -> the metric it reports

# Where lm-eval keeps them (indexing only these folders instead of all ~10^4 task files saves ~10 s).
PAPER_TASK_FOLDERS: dict[str, str] = {
    "arc_challenge": "arc", "arc_easy": "arc", "boolq": "super_glue/boolq", "copa": "super_glue/copa",
    "hellaswag": "hellaswag", "piqa": "piqa", "sciq": "sciq", "winogrande": "winogrande", "fda": "fda", "swde": "swde",
}  # fmt: skip

PACKAGED_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


# --------------------------------------------------------------------------------------------- offline + data
@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Hub and datasets offline for the duration (env vars and the already-imported libraries' flags)."""
    old_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    patched = []
    for k in OFFLINE_ENV:
        os.environ[k] = "1"
    for mod, attrs in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        m = sys.modules.get(mod)
        for a in attrs if m is not None else ():
            if hasattr(m, a):
                patched.append((m, a, getattr(m, a)))
                setattr(m, a, True)
    try:
        yield
    finally:
        for m, a, v in patched:
            setattr(m, a, v)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def local_dataset_dir(data_dir: str | os.PathLike | None, path: str) -> Path | None:
    """Where ``data_dir`` holds a copy of hub dataset ``path`` (``DIR/org/name``, ``DIR/org__name``, ``DIR/name``)."""
    if not data_dir or not path or path in PACKAGED_BUILDERS:
        return None
    root = Path(data_dir)
    for cand in (root / path, root / path.replace("/", "__"), root / path.split("/")[-1]):
        if cand.is_dir():
            return cand
    return None


def _resolve_data_files(data_files, search_dirs: list[Path]):
    if isinstance(data_files, dict):
        return {k: _resolve_data_files(v, search_dirs) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_resolve_data_files(v, search_dirs) for v in data_files]
    p = Path(str(data_files))
    if p.is_absolute() or p.exists() or "://" in str(data_files):
        return data_files
    for d in search_dirs:
        if (d / p).exists():
            return str(d / p)
    return data_files


@contextlib.contextmanager
def local_datasets(data_dir: str | os.PathLike | None = None, search_dirs: list[Path] | None = None) -> Iterator[None]:
    """``datasets.load_dataset`` (what lm-eval tasks call) reads local copies from ``data_dir`` and resolves
    relative ``data_files`` against ``search_dirs``, for the duration."""
    import datasets

    original = datasets.load_dataset
    search = [Path(d) for d in (search_dirs or [])]

    def load_dataset(path=None, name=None, *args, **kwargs):
        local = local_dataset_dir(data_dir, path)
        if local is not None:
            for saved in ([local / name] if name else []) + [local]:
                if (saved / "dataset_dict.json").exists() or (saved / "dataset_info.json").exists():
                    return datasets.load_from_disk(str(saved))
            return original(str(local), name, *args, **kwargs)
        if path in PACKAGED_BUILDERS and kwargs.get("data_files") is not None:
            kwargs["data_files"] = _resolve_data_files(kwargs["data_files"], search)
        return original(path, name, *args, **kwargs)

    datasets.load_dataset = load_dataset
    try:
        yield
    finally:
        datasets.load_dataset = original


def include_paths(include_path: str | os.PathLike | list | None = None) -> list[Path]:
    """``gkabench/tasks/lm_eval/`` (when present) plus the user's include path(s)."""
    extra = include_path if isinstance(include_path, (list, tuple)) else ([include_path] if include_path else [])
    paths = [TASKS_DIR] if TASKS_DIR.is_dir() else []
    for p in extra:
        if not Path(p).is_dir():
            raise ValueError(f"include path {p} is not a folder; pass a folder holding lm-eval task YAML files")
        paths.append(Path(p).resolve())
    return paths


def task_manager(include_path=None, tasks: list[str] | None = None):
    """An lm-eval ``TaskManager`` that also sees gkabench's task folder and ``include_path``. When every name in
    ``tasks`` is found in those folders alone, lm-eval's own ~10^4 task files are not indexed (seconds saved)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_paths(include_path)]
    if tasks:
        import lm_eval.tasks

        builtin = Path(lm_eval.tasks.__file__).parent
        narrow = paths + sorted({str(builtin / PAPER_TASK_FOLDERS[t]) for t in tasks if t in PAPER_TASK_FOLDERS})
        narrow = [p for p in narrow if Path(p).is_dir()]
        if narrow:
            local = TaskManager(include_path=narrow, include_defaults=False)
            if all(t in local.task_index for t in tasks):
                return local
    return TaskManager(include_path=paths or None)


def _dataset_of(tm, name: str) -> str | None:
    """``path[/name]`` of the dataset task ``name`` reads, when it can be told from its config."""
    entry = tm.task_index.get(name)
    if entry is None:
        return None
    cfg = dict(entry.cfg or {})
    if entry.yaml_path is not None and ("class" in cfg or not cfg.get("dataset_path")):
        try:  # resolves !function / class tags and includes
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(entry.yaml_path, resolve_func=True)
        except Exception:  # noqa: BLE001  (only used to name the dataset in a message)
            return None
    cls = cfg.get("class")
    path = getattr(cls, "DATASET_PATH", None) if cls is not None else cfg.get("dataset_path")
    sub = getattr(cls, "DATASET_NAME", None) if cls is not None else cfg.get("dataset_name")
    if path in PACKAGED_BUILDERS:
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        return f"{path} files {files}"
    return f"{path}" + (f" (config {sub})" if sub and sub != "default" else "") if path else None


_MISSING_MARKERS = ("offline", "couldn't reach", "not found", "doesn't exist", "does not exist", "no such file",
                    "unable to find", "connection", "localentrynotfound", "cannot find")  # fmt: skip


def load_tasks(tm, names: list[str], data_dir=None) -> list:
    """Build each task (its dataset loads now); a task whose data is missing offline raises one line naming the
    dataset and how to provide it. Returns Task objects (and group names, built again by lm-eval)."""
    out: list = []
    missing: list[tuple[str, str | None]] = []
    for name in names:
        if tm.task_index.get(name) is None and not Path(name).is_file():
            near = difflib.get_close_matches(name, tm.all_tasks, n=4)
            hint = f" (similar: {', '.join(near)})" if near else ""
            raise ValueError(
                f"unknown lm-eval task {name!r}{hint}; list them with `python -m gkabench.lm_eval_bridge ls tasks`"
            )
        quiet = logging.getLogger("lm_eval")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # building tasks logs config defaults at WARNING; the run itself logs as usual
        try:
            loaded = tm.load([name])
        except Exception as exc:  # noqa: BLE001  (lm-eval / datasets raise many types; the user gets one line)
            msg = " ".join(str(exc).split())[:300]
            ds = _dataset_of(tm, name)
            if not (
                isinstance(exc, (ConnectionError, FileNotFoundError, OSError))
                or any(m in msg.lower() for m in _MISSING_MARKERS)
            ):
                raise ValueError(f"lm-eval task {name}: could not be built: {type(exc).__name__}: {msg}") from None
            if ds and ds.split(" ")[0] in PACKAGED_BUILDERS:
                raise ValueError(
                    f"lm-eval task {name}: its local data ({ds}) could not be read ({msg[:120]}); relative "
                    "data_files resolve against the current folder, then the include path folders"
                ) from None
            missing.append((name, ds))
            continue
        finally:
            quiet.setLevel(level)
        if loaded["groups"]:
            out.append(name)
        else:
            out.extend(loaded["tasks"].values())
    if missing:
        what = "; ".join(f"{n}: dataset {ds}" if ds else f"{n}: its dataset" for n, ds in missing)
        copies = ", ".join(f"DIR/{ds.split(' ')[0]}" for _, ds in missing if ds) or "DIR/<dataset path>"
        where = f"not in {data_dir} and " if data_dir else ""
        raise ValueError(
            f"lm-eval data missing offline ({what}): {where}not in the HF datasets cache (HF_DATASETS_OFFLINE=1 is set); "
            f"put local copies in {copies} and pass --data DIR (data_dir=DIR), or load them once where the hub is "
            f"reachable so the cache has them"
        )
    return out


# ------------------------------------------------------------------------------------------------ the model
def _bool(v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "y")


_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}  # fmt: skip


def _torch_dtype(dtype):
    """``auto``/None -> ``"auto"``; a torch.dtype as is; bf16/fp16/fp32/bfloat16/float16/float32 names -> the dtype;
    anything else a one-line ValueError."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name in ("", "auto"):
        return "auto"
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bf16, fp16, fp32 (or bfloat16, float16, float32)")
    return _DTYPES[name]


def load_model_and_tokenizer(pretrained: str, tokenizer=None, device=None, dtype=None, backend=None):
    """``AutoModelForCausalLM`` + tokenizer from a local directory (never the hub). One-line errors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import models  # noqa: F401  (registers model_type "gkabench" with the Auto* classes)
    from .env import default_device
    from .tokenizers import BYTE_VOCAB_SIZE, load_tokenizer

    d = Path(pretrained)
    if not (d / "config.json").is_file():
        raise ValueError(
            f"{pretrained} is not a model directory (no config.json); pass a gkabench checkpoint dir or a local HF causal LM dir"
        )
    dev = torch.device(device) if device else default_device()
    config = AutoConfig.from_pretrained(str(d), local_files_only=True)
    if backend and getattr(config, "model_type", None) == "gkabench":
        config.backend = backend
    kwargs = {"dtype": _torch_dtype(dtype)}
    model = AutoModelForCausalLM.from_pretrained(str(d), config=config, local_files_only=True, **kwargs)
    model.to(dev).eval()
    has_tok = any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    if tokenizer is not None or has_tok:
        tok = load_tokenizer(tokenizer or d)
    elif getattr(config, "vocab_size", None) == BYTE_VOCAB_SIZE:
        tok = load_tokenizer(None)
    else:
        raise ValueError(
            f"{pretrained} has no tokenizer files and vocab {config.vocab_size} is not the byte tokenizer's; pass tokenizer=PATH"
        )
    return model, tok, dev


class GKABenchLM(TemplateLM):
    """lm-eval ``LM`` for gkabench (and any local causal LM) checkpoints; registered as ``gkabench``.

    model_args: ``pretrained`` (dir), ``tokenizer`` (file/dir; default the checkpoint's, or bytes),
    ``device``, ``batch_size``, ``max_length`` (left-truncation limit; default none for gkabench models),
    ``dtype`` (float32, bfloat16...), ``backend`` (gkabench mixer backend: auto, reference, triton),
    ``add_bos_token``, ``max_gen_toks``, ``prefill_chunk`` (gkabench models: generation prompts longer than this
    are prefilled that many tokens at a time through the cache, bounding activation memory at long lengths).
    """

    def __init__(self, pretrained: str, tokenizer: str | None = None, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, max_length: int | None = None, dtype: str | None = None,
                 backend: str | None = None, add_bos_token: bool | None = None, max_gen_toks: int = 256,
                 prefill_chunk: int | None = None, **kwargs):  # fmt: skip
        super().__init__()
        if kwargs:
            raise ValueError(
                f"gkabench LM: unknown model_args {', '.join(sorted(kwargs))}; see gkabench.lm_eval_bridge.GKABenchLM"
            )
        self.model, self.tokenizer, self._device = load_model_and_tokenizer(
            str(pretrained), tokenizer, device, dtype, backend
        )
        self.pretrained = str(pretrained)
        bs = str(batch_size)
        self.batch_size = 1 if bs.startswith("auto") else int(bs)  # no auto search: lengths vary too much for it
        self.config = self.model.config
        limit = (
            max_length
            or getattr(self.config, "max_position_embeddings", None)
            or getattr(self.config, "n_positions", None)
        )
        self._max_length = int(limit) if limit else None
        self.add_bos_token = bool(_bool(add_bos_token))
        self.max_gen_toks = int(max_gen_toks)
        # gkabench models: prompts longer than this are prefilled chunk by chunk through the recurrent cache
        self.prefill_chunk = int(prefill_chunk) if prefill_chunk else None
        self.recurrent_cache = getattr(self.config, "model_type", None) == "gkabench"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id

    # -- tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def device(self):
        return self._device

    @property
    def max_length(self) -> int | None:
        return self._max_length

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs
    ) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        if (
            self.add_bos_token if add_special_tokens is None else add_special_tokens
        ) and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- scoring
    @torch.no_grad()
    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """requests: ``[(key, context_ids, continuation_ids)]`` -> ``[(sum log p(continuation), is_greedy)]``.
        Right-padded batches, longest first; causal models never see the padding of a shorter row."""
        from tqdm import tqdm

        bs = override_bs or self.batch_size
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood")
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            seqs, conts = [], []
            for i in idx:
                _, ctx, cont = requests[i]
                full = ctx + cont
                if self.max_length:
                    full = full[-(self.max_length + 1) :]
                seqs.append(full[:-1])
                conts.append(cont)
            width = max(len(s) for s in seqs)
            batch = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            for r, s in enumerate(seqs):
                batch[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            logp = F.log_softmax(self._logits(batch.to(self.device)).float(), dim=-1)
            for r, (i, s, cont) in enumerate(zip(idx, seqs, conts)):
                n = len(cont)
                lp = logp[r, len(s) - n : len(s)]
                target = torch.tensor(cont, dtype=torch.long, device=lp.device)
                answer = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                pbar.update(1)
        pbar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        out = []
        for req in requests:
            (string,) = req.args
            windows = [
                utils.make_disjoint_window(w)
                for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length or (1 << 30), context_len=1,
                )
            ]  # fmt: skip
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            total = sum(s for s, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # -- generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation (sampling when a task asks for it) in left-padded batches through
        ``model.generate``; the text is cut at the first stop string."""
        from tqdm import tqdm

        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        args = [req.args for req in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, kw) in enumerate(args):
            groups.setdefault(repr(sorted((kw or {}).items(), key=lambda kv: kv[0])), []).append(i)
        out: list = [None] * len(args)
        pbar = tqdm(total=len(args), disable=disable_tqdm or self.rank != 0, desc="generate_until")
        for idx in groups.values():
            kw = dict(args[idx[0]][1] or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if eos and eos not in until:
                until.append(eos)
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            kw.pop("max_length", None)
            do_sample = bool(kw.pop("do_sample", False)) and float(kw.get("temperature", 0.0) or 0.0) > 0
            gen_kw = {k: v for k, v in kw.items() if k in ("temperature", "top_p", "top_k")} if do_sample else {}
            enc = {i: self.tok_encode(args[i][0]) for i in idx}
            if self.max_length:
                enc = {i: e[-max(1, self.max_length - max_new) :] for i, e in enc.items()}
            order = sorted(idx, key=lambda i: -len(enc[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(enc[i]) for i in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, i in enumerate(chunk):
                    ids[r, width - len(enc[i]) :] = torch.tensor(enc[i], dtype=torch.long)
                    mask[r, width - len(enc[i]) :] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                batch_kw = dict(gen_kw)  # per batch: a prefill cache belongs to this batch only
                if self.prefill_chunk and self.recurrent_cache and width > self.prefill_chunk:
                    batch_kw["cache"] = self._prefill(
                        ids, mask
                    )  # all but the last prompt token; generate takes it from there
                gen = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=do_sample,
                    pad_token_id=self.pad_id, eos_token_id=self.eot_token_id, stop_strings=until or None,
                    tokenizer=self.tokenizer, **batch_kw,
                )  # fmt: skip
                for r, i in enumerate(chunk):
                    text = self.tok_decode(gen[r, width:].tolist())
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
                    pbar.update(1)
        pbar.close()
        return out

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor):
        """The model's cache after ``ids[:, :-1]``, fed ``prefill_chunk`` tokens at a time."""
        cache, end = None, ids.shape[1] - 1
        for s in range(0, end, self.prefill_chunk):
            e = min(end, s + self.prefill_chunk)
            cache = self.model(
                input_ids=ids[:, s:e], attention_mask=mask[:, :e], cache=cache, use_cache=True, logits_to_keep=1
            ).cache
        return cache

    def get_model_info(self) -> dict:
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
        }


# -------------------------------------------------------------------------------------------- run + rows
def model_name(model_dir: str | os.PathLike) -> str:
    """Row/file name of a checkpoint: its folder name, or the run folder's for ``RUN/checkpoint``."""
    p = Path(model_dir).resolve()
    return p.parent.name if p.name == "checkpoint" and p.parent.name else p.name


def mixer_label(config) -> str | None:
    """``gka`` for an all-GKA model, ``gka,gka,gka,attention`` for a hybrid (the repeating unit); None when not ours."""
    layers = list(getattr(config, "layer_mixers", None) or [])
    if not layers:
        return None
    for p in range(1, len(layers) + 1):
        if len(layers) % p == 0 and layers == layers[:p] * (len(layers) // p):
            return ",".join(layers[:p])
    return ",".join(layers)


def result_rows(results: dict, *, model: str, mixer: str | None, model_dir: str, limit, env: dict) -> list[dict]:
    """One row per (task, metric, filter) of an lm-eval results dict."""
    import lm_eval

    rows = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for task, metrics in (results.get("results") or {}).items():
        n = ((results.get("n-samples") or {}).get(task) or {}).get("effective")
        shots = (results.get("n-shot") or {}).get(task)
        for key, value in metrics.items():
            if (
                key in ("alias", "sample_len")
                or key.startswith("sample_len,")
                or "_stderr," in key
                or not isinstance(value, (int, float))
            ):
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({
                "model": model, "mixer": mixer, "task": task, "metric": metric, "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "n": n, "filter": filt or None,
                "num_fewshot": shots, "limit": limit, "source": "lm-eval", "lm_eval": lm_eval.__version__,
                "model_dir": str(model_dir), "time_utc": now, "env": env,
            })  # fmt: skip
    return rows


def run_lm_eval(model_dir: str, tasks: list[str], data_dir: str | None = None, limit: int | None = None, batch_size: int = 1,
                device: str | None = None, num_fewshot: int | None = None, *, results_dir: str | os.PathLike = "results/eval",
                include_path=None, name: str | None = None, model: str = "gkabench", bootstrap_iters: int = 1000,
                write: bool = True) -> dict:  # fmt: skip
    """Evaluate checkpoint ``model_dir`` on lm-eval ``tasks`` offline; append one row per (task, metric) to
    ``results_dir/<model name>.jsonl`` and return ``{task: {metric: value, metric_stderr: s, "n": n}}``.

    ``model``: ``gkabench`` (:class:`GKABenchLM`) or ``hf`` (lm-eval's HFLM, through our Auto* registration).
    User errors (missing directory or data, unknown task) raise one-line ValueErrors."""
    import lm_eval

    from .env import default_device, environment
    from .io import append_jsonl

    tasks = [
        t.strip().removeprefix("lm-eval:")
        for t in (tasks.split(",") if isinstance(tasks, str) else tasks)
        if t and t.strip()
    ]
    if not tasks:
        raise ValueError("no lm-eval tasks given; pass e.g. --task lm-eval:arc_easy,piqa")
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model directory (no config.json); pass a gkabench checkpoint dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(
            f"--data {data_dir} is not a folder; pass a folder holding local dataset copies (DIR/<dataset path>)"
        )
    dev = str(torch.device(device) if device else default_device())
    folders = include_paths(include_path)
    t0 = time.perf_counter()
    with hf_offline(), local_datasets(data_dir, folders):
        tm = task_manager(include_path, tasks)
        built = load_tasks(tm, tasks, data_dir)
        if model == "gkabench":
            lm = GKABenchLM(pretrained=str(model_dir), device=dev, batch_size=batch_size)
            config = lm.model.config
        elif model == "hf":
            from lm_eval.models.huggingface import HFLM

            lm = HFLM(pretrained=str(model_dir), device=dev, batch_size=batch_size)
            config = lm.model.config
        else:
            raise ValueError(f"model {model!r}: use gkabench or hf")
        results = lm_eval.simple_evaluate(
            model=lm, tasks=built, task_manager=tm, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
            device=dev, bootstrap_iters=bootstrap_iters, log_samples=False,
        )  # fmt: skip
    elapsed = time.perf_counter() - t0
    mname = name or model_name(model_dir)
    rows = result_rows(
        results, model=mname, mixer=mixer_label(config), model_dir=str(model_dir), limit=limit, env=environment(dev)
    )
    for r in rows:
        r["elapsed_s"] = round(elapsed, 3)
        if write:
            append_jsonl(Path(results_dir) / f"{mname}.jsonl", r)
    summary: dict = {}
    for r in rows:
        m = summary.setdefault(r["task"], {"n": r["n"]})
        m[r["metric"]] = r["value"]
        m[f"{r['metric']}_stderr"] = r["stderr"]
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m gkabench.lm_eval_bridge <lm_eval arguments>``: lm-eval's CLI with gkabench registered,
    ``gkabench/tasks/lm_eval`` on the include path, and relative ``data_files`` resolved against it."""
    from lm_eval.__main__ import cli_evaluate

    import gkabench  # noqa: F401

    argv = list(sys.argv[1:] if argv is None else argv)
    folders = include_paths(None)
    if "--include_path" in argv[:-1]:
        folders.append(Path(argv[argv.index("--include_path") + 1]).resolve())
    elif folders and (argv[:1] in (["run"], ["ls"], ["validate"]) or "--tasks" in argv):
        argv += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm_eval", *argv]
    with local_datasets(None, folders):
        cli_evaluate()


if __name__ == "__main__":
    main()
