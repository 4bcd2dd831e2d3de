"""A whole training step (forward, backward, gradient clipping, AdamW) captured once as a CUDA graph and replayed.

Why: one MQAR training step (2 layers, d = 64-256, batch 256) launches ~500 kernels from Python (autograd, Triton
launchers, compiled norms' guards), which alone costs more than the GPU needs to run them: session 9 measured 26 ms
of wall time per step for 16 ms of kernels (512 tokens, d = 128). Replaying a captured graph costs one launch, so
the GPU's own time becomes the step time: 1.2-3.5x the steps per second alone on the H200 (sessions 11-12). In the
MQAR sweep, where two runs share the GPU and one hides the other's launching, graphed steps were no faster
(sessions 11-12), so the device sweeps no longer use them.

What a graph needs and how the loop provides it (:func:`gkabench.train._train` with ``cuda_graph=True``):

- fixed shapes: MQAR batches are ``[B, T]`` every step; the variable number of scored answers is padded to a fixed
  capacity with a sentinel position (:func:`pad_loss_positions`; the loss ignores it, so the mean is unchanged);
- fixed addresses: each step's batch is copied into static buffers before the replay; gradients are allocated
  inside the capture (they were None before it), so each replay overwrites them instead of accumulating;
- a learning rate that changes without recapture: during capture every param group's lr is a 0-dim CUDA tensor,
  which the fused AdamW reads at each replay; the scheduler keeps float lrs and :meth:`GraphedStep.__call__` copies
  them into those tensors before each replay (so checkpoints and the scheduler never see a tensor lr);
- no host sync inside the step: clipping and AdamW (``capturable=True``) run on device; the loss and gradient
  norm are static tensors read only on logging steps;
- warm-up before capture: Triton autotuning, torch.compile and AdamW's lazy state happen in the first eager steps
  (run on a side stream, as capture requires); those are real training steps.

Eager and graphed steps run the same kernels on the same data, so losses agree to rounding (checked on the device
by ``scripts/mqar_graph_check.py`` before a sweep uses graphs). Only for one process (no DDP) and no gradient
accumulation, where the loop falls back to eager and says why.
"""

from __future__ import annotations

import torch

# eager steps before the capture: the first compiles / autotunes, the second creates AdamW's state, the third runs
# with everything warm (PyTorch's recipe warms up on a side stream for a few iterations)
WARMUP_STEPS = 3


def graph_unsupported(cfg, world: int, device: torch.device) -> str | None:
    """Why ``cfg.cuda_graph`` cannot be honoured here (one line), or None when it can."""
    if device.type != "cuda":
        return "needs a CUDA device"
    if world > 1:
        return "one process only (DDP's gradient hooks are not captured)"
    if cfg.grad_accum != 1:
        return "no gradient accumulation (--grad-accum 1)"
    if cfg.data != "mqar":
        return "--data mqar only (text batches change shape with their documents)"
    return None


def graphed(row: dict) -> bool:
    """Whether a training summary or MQAR row trained with replayed graphs (its ``cuda_graph`` note, written by
    :func:`gkabench.train.train`, reads "on from step N"; "off: why" or absent otherwise)."""
    return str(row.get("cuda_graph", "off")).startswith("on")


def pad_loss_positions(positions: torch.Tensor | None, capacity: int, sentinel: int) -> torch.Tensor:
    """``positions [n]`` (int64, n <= capacity) padded to ``[capacity]`` with ``sentinel`` (= B * (T - 1): past
    every real position), which :func:`gkabench.models.modeling.positions_loss` scores as ignored."""
    if positions is None:
        raise ValueError("cuda graph: the batch has no loss positions to pad (every target counts); run without --cuda-graph")
    n = positions.numel()
    if n > capacity:
        raise ValueError(f"cuda graph: {n} scored targets exceed the capacity {capacity}; run without --cuda-graph")
    out = torch.full((capacity,), sentinel, dtype=positions.dtype)
    out[:n] = positions
    return out


class GraphedStep:
    """One optimizer step captured from ``model``, ``opt`` (AdamW, ``capturable=True``) at ``grad_clip``.

    ``example``: a batch dict (``input_ids``, ``labels``, padded ``loss_positions``; CPU or device tensors) whose
    shapes and dtypes every later batch shares; copied into the static device buffers. Call with a batch (CPU or device tensors of those shapes): copies it into the
    static buffers, sets the lrs, replays; returns ``(loss, grad_norm)``, 0-dim device tensors overwritten by the
    next call (read them before, e.g. ``loss.item()`` on logging steps).
    """

    def __init__(self, model, opt, grad_clip: float, example: dict, dtype=torch.bfloat16):
        self.opt = opt
        device = next(model.parameters()).device
        self.static = {k: v.to(device).clone() for k, v in example.items()}
        self.lrs = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device) for g in opt.param_groups]
        floats = [g["lr"] for g in opt.param_groups]
        opt.zero_grad(set_to_none=True)  # gradients then live in the graph's memory pool, written by each replay
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        try:
            for g, t in zip(opt.param_groups, self.lrs):
                g["lr"] = t
            # thread_local: the data thread preparing the next batch (CPU only) must not invalidate the capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                # the autocast weight cache would hold casts made at capture time across replays: off
                with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
                    loss = model(**self.static, use_cache=False).loss
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
                opt.step()
        finally:
            for g, lr in zip(opt.param_groups, floats):
                g["lr"] = lr
        self.loss, self.grad_norm = loss.detach(), (norm.detach() if norm is not None else None)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        for k, buf in self.static.items():
            buf.copy_(batch[k], non_blocking=True)
        for t, g in zip(self.lrs, self.opt.param_groups):
            t.fill_(float(g["lr"]))
        self.graph.replay()
        return self.loss, self.grad_norm
