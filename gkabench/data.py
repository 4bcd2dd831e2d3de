"""Training data sources for :func:`gkabench.train.train`: one interface, three kinds of data.

Every source gives ``micro_batch(step, part, parts, size, split="train" | "eval") -> {"input_ids", "labels"(,
"cu_seqlens")}``, a pure function of its seed and the step (so a resumed or multi-GPU run sees exactly the
batches an uninterrupted single-GPU run would), and ``vocab_size``:

- :class:`MQARSource`: the Zoology MQAR generator (:mod:`gkabench.tasks.mqar`), loss on answers only;
- :class:`TextSource`: local text / JSONL files through ``datasets``, packed with ``cu_seqlens``;
- :class:`FactsSource`: the generated long-context documents of ``gkabench eval`` (rag / longqa / niah), each
  with its answer(s).

:func:`build_source` picks one from a :class:`gkabench.train.TrainConfig`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .tasks.mqar import MQARConfig, curriculum_mixture, mqar_batch, mqar_mixed_batch

if TYPE_CHECKING:
    from .train import TrainConfig


class MQARSource:
    """MQAR: step s's global batch is ``mqar_batch(cfg, batch_size, (seed, s))``; eval uses another seed.

    ``curriculum=True``: training batches mix easier pair counts in (:func:`curriculum_mixture`, Zoology's
    training mixture); evaluation is always on ``cfg`` alone.
    """

    def __init__(self, cfg: MQARConfig, seed: int, curriculum: bool = False, prefetch: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.seed = cfg, seed
        self.mixture = curriculum_mixture(cfg) if curriculum else None
        self._cache: tuple[tuple, dict] | None = None
        # The next ``prefetch`` training batches are generated in background threads while the GPU works (numpy
        # releases the GIL, so the threads run in parallel): one batch of 256 rows costs 10-20 ms of one core
        # whatever its length (the key draw is over the whole key range), as long as a graphed small-model step.
        # Default: half the torch threads, 1 to 4. Batches are a pure function of (seed, step): the prefetch depth
        # changes nothing but when they are made.
        self.prefetch = max(1, min(4, torch.get_num_threads() // 2)) if prefetch is None else max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max_workers=self.prefetch)
        self._ahead: dict[tuple, object] = {}  # key -> future
        self._closed = False
        self.wait_s = 0.0  # time the training loop spent waiting for batches (made in its thread or not ready yet)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def max_scored_targets(self, batch_size: int) -> int:
        """The most answer positions a training batch of ``batch_size`` can score (every row queries all its pairs
        at most): the fixed length CUDA-graph steps pad their loss positions to."""
        configs = [c for c, _ in self.mixture] if self.mixture is not None else [self.cfg]
        return batch_size * max(c.queries for c in configs)

    def _make(self, step: int, size: int, split: str) -> dict:
        if split == "train" and self.mixture is not None:
            b = mqar_mixed_batch(self.mixture, size, (self.seed, step))
        else:
            seed = (self.seed, step) if split == "train" else (self.seed + 7919, 10**6 + step)
            b = mqar_batch(self.cfg, size, seed)
        return {"input_ids": b.input_ids, "labels": b.labels}

    def global_batch(self, step: int, size: int, split: str = "train") -> dict:
        key = (step, size, split)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        t0 = time.perf_counter()
        ahead = self._ahead.pop(key, None)
        out = ahead.result() if ahead is not None else self._make(step, size, split)
        if split == "train":
            self.wait_s += time.perf_counter() - t0
            # the next `prefetch` steps are queued; batches outside them (a resume or a jump back) are dropped
            for k in [k for k in self._ahead if not step < k[0] <= step + self.prefetch or k[1:] != (size, split)]:
                self._ahead.pop(k).cancel()
            for s in range(step + 1, step + 1 + (0 if self._closed else self.prefetch)):
                if (s, size, split) not in self._ahead:
                    self._ahead[(s, size, split)] = self._pool.submit(self._make, s, size, split)
        self._cache = (key, out)
        return out

    def close(self) -> None:
        """Stop making batches ahead (queued ones are dropped); the source still makes batches on demand."""
        self._ahead.clear()
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)  # the queued batches are the pool's: cancelled here

    def micro_batch(self, step: int, part: int, parts: int, size: int, split: str = "train") -> dict:
        g = self.global_batch(step, size, split)
        n = size // parts
        return {k: v[part * n : (part + 1) * n] for k, v in g.items()}


class TextSource:
    """Local text/JSONL documents, tokenized and cut into ``seq_len`` chunks (EOS after every document).

    A micro-batch is either ``[n, seq_len]`` (``packing=False``; documents then see each other inside a chunk)
    or one packed row ``[1, n * seq_len]`` with ``cu_seqlens`` at every document and chunk boundary.
    Labels equal the inputs except at the first token of each document (nothing before it to predict from).
    """

    def __init__(self, files: list[str], tokenizer, seq_len: int, packing: bool, text_field: str, seed: int, holdout: float = 0.02):
        self.seq_len, self.packing, self.seed = seq_len, packing, seed
        self.vocab_size = len(tokenizer)
        tokens, starts = tokenize_files(files, tokenizer, text_field)
        n = len(tokens) // seq_len
        if n < 2:
            raise ValueError(f"{', '.join(files)}: only {len(tokens)} tokens, fewer than 2 chunks of seq_len {seq_len}; use a smaller --seq-len or more text")
        self.tokens = torch.from_numpy(tokens[: n * seq_len].reshape(n, seq_len))
        self.starts = torch.from_numpy(starts[: n * seq_len].reshape(n, seq_len))
        self.starts[:, 0] = True  # a chunk boundary is a sequence boundary
        n_eval = max(1, int(n * holdout))
        self.train_ids = np.arange(n - n_eval)
        self.eval_ids = np.arange(n - n_eval, n)
        self.eval_override: TextSource | None = None

    def _rows(self, step: int, size: int, split: str) -> np.ndarray:
        if split == "eval":
            if self.eval_override is not None:
                return self.eval_override._rows(step, size, "all")
            ids = self.eval_ids
            return ids[(step * size + np.arange(size)) % len(ids)]
        ids = self.train_ids if split == "train" else np.arange(len(self.tokens))
        if split != "train":
            return ids[(step * size + np.arange(size)) % len(ids)]
        # Sample k of the run is chunk perm_epoch[k mod n]: every chunk once per epoch, order seeded per epoch.
        k = step * size + np.arange(size)
        epoch, pos = k // len(ids), k % len(ids)
        out = np.empty(size, dtype=np.int64)
        for e in np.unique(epoch):
            perm = np.random.default_rng((self.seed, int(e))).permutation(len(ids))
            out[epoch == e] = ids[perm[pos[epoch == e]]]
        return out

    def micro_batch(self, step: int, part: int, parts: int, size: int, split: str = "train") -> dict:
        src = self.eval_override if (split == "eval" and self.eval_override is not None) else self
        rows = self._rows(step, size, split)
        n = size // parts
        rows = rows[part * n : (part + 1) * n]
        ids, starts = src.tokens[rows], src.starts[rows]
        labels = ids.masked_fill(starts, -100)
        if not self.packing:
            return {"input_ids": ids, "labels": labels}
        flat_starts = starts.reshape(-1)
        cu = torch.cat([flat_starts.nonzero().flatten(), torch.tensor([flat_starts.numel()])]).to(torch.int32)
        return {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1), "cu_seqlens": cu}


class FactsSource:
    """Generated long-context documents (:mod:`gkabench.tasks`): rag / longqa / niah inputs of about ``seq_len``
    tokens over fictional facts, each followed by its answer, so a model learns to read answers from context.

    Document ``k`` of the run is a pure function of ``(seed, k)`` (train) or ``(seed + 7919, k)`` (eval); step
    ``s``'s global batch is documents ``s * batch_size ...``, made on demand (no corpus in memory). A micro-batch is
    ``[n, seq_len]``: each document tokenized, EOS appended, cut or right-padded (pad labels -100) to ``seq_len``.
    Seeds are strings, disjoint from the integer seeds of ``gkabench eval`` rows.
    """

    def __init__(self, tokenizer, seq_len: int, seed: int, tasks: str = "rag,longqa,niah", questions: int = 1):
        from .tasks.fitting import TokenCounter, UnfitLength
        from .tasks.longctx import parse_tasks, training_text

        self.tokenizer, self.seq_len, self.seed, self.questions = tokenizer, seq_len, seed, questions
        self.vocab_size = len(tokenizer)
        self.counter = TokenCounter(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token; documents cannot be separated (use the byte tokenizer or one with eos)")
        self._text = training_text
        self.specs = []
        for spec in parse_tasks(tasks):  # keep the task flavours whose fixed part fits this sequence length
            try:
                training_text(0, seq_len, seed, self.counter, [spec])
                self.specs.append(spec)
            except UnfitLength:
                continue
        if not self.specs:
            raise ValueError(f"--seq-len {seq_len} is too short for facts documents; use --seq-len 1024 or more")

    REDRAWS = 4  # fresh draws of a document's own flavour before falling back to the next flavours

    def _doc(self, k: int, split: str) -> list[int]:
        seed = self.seed if split == "train" else self.seed + 7919
        text = self._fitting_text(k, seed)
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"] + [self.eos]
        return ids[: self.seq_len]

    def _fitting_text(self, k: int, seed) -> str:
        """Document ``k``'s text. A draw whose fixed part (question, demos, gold passages) does not fit ``seq_len``
        is redrawn deterministically: first the same flavour under derived string seeds (``"<seed>~<attempt>"``,
        disjoint from every other document's seed), then the next flavours in order. So every document fits and
        stays a pure function of ``(seed, k)``."""
        from .tasks.fitting import UnfitLength

        n = len(self.specs)
        own = k % n
        order = [(own, a) for a in range(self.REDRAWS)] + [((own + j) % n, a) for j in range(1, n) for a in range(self.REDRAWS)]
        reason = ""
        for spec_i, attempt in order:
            s = seed if attempt == 0 else f"{seed}~{attempt}"
            try:
                return self._text(k, self.seq_len, s, self.counter, [self.specs[spec_i]], questions=self.questions)
            except UnfitLength as exc:
                reason = reason or str(exc).split(";")[0]
        raise ValueError(f"--seq-len {self.seq_len} is too short for facts document {k} in every task flavour ({reason}); "
                         "use a larger --seq-len, e.g. 4096")

    def micro_batch(self, step: int, part: int, parts: int, size: int, split: str = "train") -> dict:
        n = size // parts
        ids = torch.full((n, self.seq_len), self.pad, dtype=torch.long)
        labels = torch.full((n, self.seq_len), -100, dtype=torch.long)
        for j in range(n):
            doc = torch.tensor(self._doc(step * size + part * n + j, split))
            ids[j, : len(doc)] = doc
            labels[j, : len(doc)] = doc
        return {"input_ids": ids, "labels": labels}


def tokenize_files(files: list[str], tokenizer, text_field: str) -> tuple[np.ndarray, np.ndarray]:
    """All documents of ``files`` as one token stream (EOS after each) and a bool array marking document starts."""
    import datasets

    datasets.disable_progress_bars()  # our own progress bar is the one to watch
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"data file {missing[0]} not found; pass local .txt/.jsonl files or --data mqar")
    kinds = {Path(f).suffix for f in files}
    if kinds <= {".txt", ".text"}:
        # One document per blank-line-separated paragraph block: "paragraph" sampling keeps documents whole.
        ds = datasets.load_dataset("text", data_files=files, split="train", sample_by="paragraph")
        field_name = "text"
    elif kinds <= {".jsonl", ".json"}:
        ds = datasets.load_dataset("json", data_files=files, split="train")
        field_name = text_field
        if field_name not in ds.column_names:
            raise ValueError(f"{files[0]}: no field {field_name!r} (fields: {', '.join(ds.column_names)}); pass --text-field")
    else:
        raise ValueError(f"data files must all be .txt or all .jsonl/.json, got {sorted(kinds)}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; documents cannot be separated (use the byte tokenizer or one with eos)")
    enc = ds.map(lambda b: {"ids": tokenizer(b[field_name], add_special_tokens=False)["input_ids"]}, batched=True, remove_columns=ds.column_names)
    docs = [np.asarray(d + [eos], dtype=np.int64) for d in enc["ids"] if d]
    if not docs:
        raise ValueError(f"{', '.join(files)}: no non-empty documents")
    tokens = np.concatenate(docs)
    starts = np.zeros(len(tokens), dtype=bool)
    starts[np.cumsum([0] + [len(d) for d in docs[:-1]])] = True
    return tokens, starts


def build_source(cfg: TrainConfig, tokenizer):
    if cfg.data == "mqar":
        return MQARSource(cfg.mqar(), cfg.seed, curriculum=cfg.mqar_curriculum)
    if cfg.data == "facts":
        return FactsSource(tokenizer, cfg.seq_len, cfg.seed, questions=cfg.facts_questions)
    files = [f.strip() for f in cfg.data.split(",") if f.strip()]
    src = TextSource(files, tokenizer, cfg.seq_len, cfg.packing, cfg.text_field, cfg.seed)
    if cfg.eval_data:
        ev = [f.strip() for f in cfg.eval_data.split(",") if f.strip()]
        src.eval_override = TextSource(ev, tokenizer, cfg.seq_len, cfg.packing, cfg.text_field, cfg.seed, holdout=0.0)
    return src
