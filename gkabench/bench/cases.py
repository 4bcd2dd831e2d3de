"""One measurable cell of a sweep: a callable to time (rotating its input sets), the tensors whose grads are
cleared between calls, and what the row reports about it (batch, tokens per call, state bytes, shapes)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import ops
from .config import SpeedConfig
from .flops import gka_flops


@dataclass
class Case:
    fn: Callable[[], object]
    batch: int
    tokens: int  # tokens processed per call (decode: one per sequence)
    state_bytes: int | None  # per sequence
    grad_to_none: list[torch.Tensor] = field(default_factory=list)
    flops: int | None = None
    info: dict = field(default_factory=dict)  # shapes and ops actually used


def _rotate(items: list) -> Callable[[], object]:
    it = itertools.cycle(items)
    return lambda: next(it)


def build_case(cfg: SpeedConfig, level: str, mode: str, mixer: str, T: int, decode_batch: int | None, device) -> Case:
    if level == "op":
        return _op_case(cfg, mode, mixer, T, decode_batch, device)
    if level == "layer":
        return _layer_case(cfg, mode, mixer, T, decode_batch, device)
    raise ValueError(f"unknown level {level!r}; choose op or layer")


# ----------------------------------------------------------------------------------------------- op level


def op_dims(cfg: SpeedConfig, mixer: str) -> ops.OpDims:
    if cfg.preset == "paper":  # the op shapes of the layer built at its registry defaults
        from ..layers import build_mixer

        return ops.op_dims_from_layer(build_mixer(mixer, cfg.hidden))
    return ops.OpDims(cfg.heads, cfg.head_dim, cfg.head_dim)


def _op_case(cfg: SpeedConfig, mode: str, mixer: str, T: int, decode_batch: int | None, device) -> Case:
    dims = op_dims(cfg, mixer)
    dtype = cfg.torch_dtype
    info = {"heads": dims.heads, "key_dim": dims.key_dim, "value_dim": dims.value_dim,
            "op": ops.OP_NAMES[mixer][0 if device.type == "cuda" else 1]}  # fmt: skip
    n_sets = max(1, cfg.input_sets)
    if mode == "decode":
        b = decode_batch or 1
        pb = min(b, cfg.batch_for(T))  # prefill on fewer sequences, then tile the state
        with torch.no_grad():
            _, state = ops.forward(mixer, ops.make_inputs(mixer, pb, T, dims, dtype, device, seed=99),
                                   final_state=True, num_iter=cfg.num_iter)  # fmt: skip
            state = ops.tile_state(mixer, state, b, T)
        steps = [ops.make_inputs(mixer, b, 1, dims, dtype, device, seed=i) for i in range(n_sets)]
        nxt = _rotate(steps)
        sb = ops.state_bytes(mixer, dims, T, dtype)

        def fn():
            with torch.no_grad():
                return ops.step(mixer, nxt(), state, num_iter=cfg.num_iter)

        info["prefill_batch"] = pb
        return Case(fn, b, b, sb, info=info)

    B = cfg.batch_for(T)
    grad = mode == "fwdbwd"
    sets = [ops.make_inputs(mixer, B, T, dims, dtype, device, seed=i, requires_grad=grad) for i in range(n_sets)]
    nxt = _rotate(sets)
    flops = None
    if mixer == "gka":
        flops = gka_flops(B, T, dims.heads, dims.key_dim, dims.value_dim, cfg.num_iter, backward=grad)
    if grad:
        dos = [torch.randn(B, T, dims.heads, dims.value_dim, device=device, dtype=dtype) for _ in range(n_sets)]
        nxt_do = _rotate(dos)

        def fn():
            inp = nxt()
            o, _ = ops.forward(mixer, inp, final_state=False, num_iter=cfg.num_iter)
            o.backward(nxt_do())

        gtn = [s[key] for s in sets for key in ("q", "k", "v")]
        return Case(fn, B, B * T, ops.state_bytes(mixer, dims, T, dtype), grad_to_none=gtn, flops=flops, info=info)

    final = mode == "prefill"

    def fn():
        with torch.no_grad():
            return ops.forward(mixer, nxt(), final_state=final, num_iter=cfg.num_iter)

    return Case(fn, B, B * T, ops.state_bytes(mixer, dims, T, dtype), flops=flops, info=info)


# ----------------------------------------------------------------------------------------------- layer level


def _layer_case(cfg: SpeedConfig, mode: str, mixer: str, T: int, decode_batch: int | None, device) -> Case:
    from ..layers import build_mixer, get_mixer_spec

    if device.type == "cuda":  # a layer that would fall back to a token-by-token reference is not timed
        spec = get_mixer_spec(mixer)
        issues = [i for i in (spec.known_issues() if spec.known_issues else []) if "unavailable" in i.lower()]
        if issues:
            raise ops.CellUnavailable(issues[0])
    dtype = cfg.torch_dtype
    torch.manual_seed(0)
    kw = {"num_iter": cfg.num_iter} if mixer == "gka" else {}
    if cfg.preset == "paper":
        m = build_mixer(mixer, cfg.hidden, **kw)
    else:
        m = build_mixer(mixer, cfg.hidden, cfg.heads, cfg.head_dim, **kw)
    m = m.to(device=device, dtype=dtype)
    info = {"heads": m.num_heads, "key_dim": m.head_dim, "params": sum(p.numel() for p in m.parameters())}
    try:
        sb = m.state_bytes(seq_len=T, dtype=dtype)
    except NotImplementedError:
        sb = None
    n_sets = max(1, cfg.input_sets)
    gen = torch.Generator(device=device).manual_seed(0)

    def x_of(B, L, grad=False):
        return torch.randn(B, L, cfg.hidden, generator=gen, device=device).to(dtype).requires_grad_(grad)

    if mode == "decode":
        b = decode_batch or 1
        pb = min(b, cfg.batch_for(T))
        with torch.no_grad():
            _, cache = m(x_of(pb, T), use_cache=True)
        if pb != b:
            cache.reorder(torch.arange(b, device=device) % pb)
        nxt = _rotate([x_of(b, 1) for _ in range(n_sets)])

        def fn():
            with torch.no_grad():
                return m(nxt(), cache=cache, use_cache=True)

        info["prefill_batch"] = pb
        return Case(fn, b, b, cache.nbytes() // b, info=info)

    B = cfg.batch_for(T)
    if mode == "fwdbwd":
        xs = [x_of(B, T, grad=True) for _ in range(n_sets)]
        dys = [torch.randn_like(x) for x in xs]
        nxt = _rotate(list(zip(xs, dys)))

        def fn():
            x, dy = nxt()
            y, _ = m(x)
            y.backward(dy)

        return Case(fn, B, B * T, sb, grad_to_none=[*xs, *m.parameters()], info=info)

    nxt = _rotate([x_of(B, T) for _ in range(n_sets)])
    use_cache = mode == "prefill"

    def fn():
        with torch.no_grad():
            return m(nxt(), use_cache=use_cache)

    return Case(fn, B, B * T, sb, info=info)
