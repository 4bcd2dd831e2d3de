"""The gkabench causal LM: embeddings, ``num_layers`` pre-norm blocks, final RMSNorm, LM head.

    block(x) = x + Mixer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

Each block's mixer comes from the registry (:func:`gkabench.layers.build_mixer`) by the config's per-layer
pattern, so any mixer and any hybrid (``gka,gka,gka,attention``) is one config away. All mixers share one forward
signature and one cache protocol (:mod:`gkabench.layers.base`); the model only routes ``attention_mask``,
``cu_seqlens`` and a per-layer :class:`MixerCache` through them.

    model = GKABenchForCausalLM(GKABenchConfig(mixer="gka", num_layers=2, hidden_size=64, head_dim=32))
    out = model(input_ids, labels=input_ids)          # input_ids [B, T] -> out.logits [B, T, V], out.loss
    out = model(ids[None], cu_seqlens=cu)             # packed documents: ids [1, total], cu [N + 1]
    model.generate(input_ids, max_new_tokens=16)      # recurrent caches; one new token per step

Generation: recent transformers 5.x call the cache ``cache``, earlier 5.x ``past_key_values``; the model accepts
both, and its output puts the cache in the field the installed version defines (``.cache`` reads it in both), so
``generate`` works with either (tested with 5.17 and 5.24). The model makes
its own :class:`GKABenchCache` on the first call with ``use_cache``, and ``generate`` then feeds only the new
token together with that cache; the cache of a call is a new object (mixers never mutate their input cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from dataclasses import dataclass, fields

from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layers import MixerCache, build_mixer
from ..layers.blocks import RMSNorm, RotaryEmbedding, fused_call, silu_mul, token_positions
from .configuration import GKABenchConfig


# transformers renamed CausalLMOutputWithPast's cache field from ``past_key_values`` (<= 5.17, what the H200 image
# has) to ``cache`` (5.24 rejects the old name); ``generate`` reads whichever its version defines.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"

if _CACHE_FIELD == "cache":
    GKABenchLMOutput = CausalLMOutputWithPast
else:

    @dataclass
    class GKABenchLMOutput(CausalLMOutputWithPast):
        """``CausalLMOutputWithPast`` of an older transformers, with ``.cache`` naming its ``past_key_values``."""

        @property
        def cache(self):
            return self.past_key_values


class GKABenchCache:
    """Decoding state of the whole model: one :class:`MixerCache` (or None before the first call) per layer.

    It is not a ``transformers.Cache`` (those assume key/value tensors per layer); it offers what ``generate``
    asks of a cache it does not build itself: the length seen so far, beam reordering, and flags saying it is
    neither compilable nor croppable (recurrent states cannot be rolled back).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, layers: list[MixerCache | None], positions: torch.Tensor | None = None):
        self.layers = list(layers)
        # [B] int64: real (unpadded) tokens each sequence has consumed, the next token's learned position; kept
        # only by models with learned_positions
        self.positions = positions

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, idx: int) -> MixerCache | None:
        return self.layers[idx]

    def __iter__(self):
        return iter(self.layers)

    @property
    def is_linear(self) -> list[bool]:
        # generate() slices already-seen prompt tokens when a user passes a cache back in; it decides that from
        # this flag being False and get_seq_length(), which is what we want for every mixer.
        return [False] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (the same for every layer)."""
        cache = self.layers[layer_idx] if self.layers else None
        return cache.seen_tokens if cache is not None else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select / permute sequences along the batch (beam search), in place."""
        for cache in self.layers:
            if cache is not None:
                cache.reorder(beam_idx)
        if self.positions is not None:
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers if c is not None)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: x ``[..., hidden]`` -> ``[..., hidden]``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(fused_call(silu_mul, self.gate_proj(x), self.up_proj(x)))


class GKABenchBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (no MLP when intermediate_size is 0)."""

    def __init__(self, config: GKABenchConfig, layer_idx: int):
        super().__init__()
        name = config.layer_mixers[layer_idx]
        self.mixer_name = name
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = build_mixer(
            name, config.hidden_size, config.num_heads, config.head_dim,
            backend=config.backend, layer_idx=layer_idx, **config.options_for(name),
        )  # fmt: skip
        # intermediate_size 0: a block is its mixer alone (Zoology's MQAR sweep configs swap the MLP for an identity)
        has_mlp = bool(config.intermediate_size)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if has_mlp else None
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size) if has_mlp else None
        # from_pretrained builds the model on the meta device and refills only saved tensors; RoPE frequencies are
        # a non-persistent buffer, so _init_weights recomputes them and needs the base the mixer was built with.
        theta = float(getattr(self.mixer, "options", {}).get("rope_theta", 10000.0))
        for sub in self.mixer.modules():
            if isinstance(sub, RotaryEmbedding):
                sub.rope_base = theta

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache=None, use_cache=False):
        """x ``[B, T, hidden]`` -> (x ``[B, T, hidden]``, new MixerCache or None)."""
        y, new_cache = self.mixer(self.mixer_norm(x), attention_mask=attention_mask, cu_seqlens=cu_seqlens, cache=cache, use_cache=use_cache)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, new_cache


class GKABenchPreTrainedModel(PreTrainedModel):
    config_class = GKABenchConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["GKABenchBlock"]
    # Recurrent state cannot be rewound: no assisted decoding, and generate() must not build a DynamicCache.
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Linear and embedding weights get the usual N(0, initializer_range); every other parameter keeps the
        # init its mixer gave it (decay rates, dt biases, conv taps...), which a generic init would destroy.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, RotaryEmbedding):
            base = getattr(module, "rope_base", 10000.0)
            idx = torch.arange(0, module.dim, 2, dtype=torch.float32, device=module.inv_freq.device)
            module.inv_freq.copy_(1.0 / (base ** (idx / module.dim)))


class GKABenchModel(GKABenchPreTrainedModel):
    """Embeddings + blocks + final norm; returns the final hidden states and the new cache."""

    def __init__(self, config: GKABenchConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        n_pos = int(config.learned_positions or 0)
        self.embed_positions = nn.Embedding(n_pos, config.hidden_size) if n_pos > 0 else None
        p = float(config.embed_dropout or 0.0)
        self.embed_dropout = nn.Dropout(p) if p > 0 else None  # None: no op and no random numbers drawn
        self.layers = nn.ModuleList(GKABenchBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, cu_seqlens=None, cache=None, use_cache=False):
        """input_ids ``[B, T]`` (or inputs_embeds ``[B, T, hidden]``) -> (hidden ``[B, T, hidden]``, cache)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}; pass the cache this model returned")
        next_positions = None
        if self.embed_positions is not None:
            x, next_positions = self._add_positions(x, attention_mask, cu_seqlens, cache)
        if self.embed_dropout is not None:
            x = self.embed_dropout(x)  # identity in eval mode
        if attention_mask is not None:
            # generate() passes a mask over cached + new tokens; every mixer keeps what it needs of the past in
            # its own cache, so the mixers get the columns of the new tokens only (T' = T, allowed by the contract).
            attention_mask = attention_mask[:, -x.shape[1] :]
            if bool(attention_mask.all()):
                attention_mask = None
        new_layers = []
        for i, block in enumerate(self.layers):
            x, layer_cache = block(
                x, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                cache=cache[i] if cache is not None else None, use_cache=use_cache,
            )  # fmt: skip
            new_layers.append(layer_cache)
        return self.norm(x), (GKABenchCache(new_layers, next_positions) if use_cache else None)

    def _add_positions(self, x, attention_mask, cu_seqlens, cache):
        """x ``[B, T, hidden]`` + its learned position embeddings -> (x, positions after it ``[B]`` or None).

        A token's position counts the real tokens before it in its own sequence: packed documents start at 0,
        left padding does not shift positions (as attention's RoPE positions), and a cache continues its count."""
        B, T = x.shape[:2]
        limit = self.embed_positions.num_embeddings
        seen = cache.get_seq_length() if cache is not None else 0
        if seen + T > limit:  # shapes only (no GPU sync): padding can only lower positions
            raise ValueError(
                f"the model has learned position embeddings for {limit} tokens but this input reaches {seen + T}; "
                f"use sequences of at most {limit} tokens (or a model built with a larger learned_positions)"
            )
        if cu_seqlens is not None:
            positions, after = token_positions(cu_seqlens, T)[None], None
        else:
            real = attention_mask[:, -T:].long() if attention_mask is not None else x.new_ones(B, T, dtype=torch.long)
            past = cache.positions if cache is not None else None
            if past is None:
                past = torch.full((B,), seen, dtype=torch.long, device=x.device)
            positions = (past[:, None] + real.cumsum(1) - 1).clamp_min(0)
            after = past + real.sum(1)
        return x + self.embed_positions(positions).to(x.dtype), after


class GKABenchForCausalLM(GKABenchPreTrainedModel, GenerationMixin):
    """Causal LM over :class:`GKABenchModel`; the LM head is tied to the embeddings when the config says so."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: GKABenchConfig):
        super().__init__(config)
        self.model = GKABenchModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: GKABenchCache | None = None,
        past_key_values: GKABenchCache | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        loss_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> GKABenchLMOutput:
        """Logits ``[B, T, V]`` (float32 when training with labels; the last ``logits_to_keep`` positions when > 0).

        - ``attention_mask [B, T']`` (1 = real token, left or right padding); with a cache it covers the cached
          tokens too, as generate() passes it.
        - ``labels [B, T]``: next-token targets aligned with input_ids (shifted inside, HF convention), -100 =
          ignored. The loss is the mean cross-entropy over the kept targets.
        - ``cu_seqlens [N + 1]`` with B = 1: packed documents, no state or attention across their boundaries.
        - ``cache`` / ``past_key_values``: a :class:`GKABenchCache` from an earlier call; ``use_cache`` returns the
          updated one in ``.cache``.
        - ``loss_positions`` (with ``labels``): flat indices into the ``B * (T - 1)`` shifted target positions whose
          label is not -100 (:func:`loss_positions_of`). The LM head then runs on those positions only and
          ``.logits`` is None; the loss is the same mean. Why: MQAR labels one token in four, and at vocab 8192
          the full ``[B, T, V]`` float32 logits and their gradient are most of a small model's step.
        """
        if cache is None:
            cache = past_key_values
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training and labels is None and cu_seqlens is None
        if cu_seqlens is not None and use_cache:
            raise ValueError("cu_seqlens (packed documents) cannot be combined with use_cache; decode unpacked sequences")
        hidden, new_cache = self.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            cu_seqlens=cu_seqlens, cache=cache, use_cache=use_cache,
        )  # fmt: skip
        if labels is not None and loss_positions is not None:
            loss = positions_loss(self.lm_head, hidden, labels, loss_positions)
            return GKABenchLMOutput(loss=loss, logits=None, **{_CACHE_FIELD: new_cache})
        if logits_to_keep and labels is None:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return GKABenchLMOutput(loss=loss, logits=logits, **{_CACHE_FIELD: new_cache})


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits ``[B, T, V]`` at t predict labels ``[B, T]`` at t + 1 (-100 ignored).
    Computed in float32 whatever the autocast dtype."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


def loss_positions_of(labels: torch.Tensor) -> torch.LongTensor | None:
    """Flat indices of the shifted targets ``labels[:, 1:]`` that are not -100, or None when every one counts
    (then the plain path is as cheap). Call it on the CPU copy of the batch: on a GPU tensor it waits for the GPU."""
    keep = (labels[:, 1:] != -100).reshape(-1)
    if bool(keep.all()):
        return None
    return keep.nonzero().squeeze(1)


def positions_loss(lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (float32) of ``lm_head(hidden)`` at the shifted target ``positions`` only.
    hidden ``[B, T, D]``, labels ``[B, T]``, positions ``[n]`` (int64, flat over ``B * (T - 1)``).

    A position equal to ``B * (T - 1)`` (one past the last) is padding and not scored: CUDA-graph training steps
    pad to a fixed count (:func:`gkabench.train_graph.pad_loss_positions`); the mean is over the real ones."""
    positions = positions.to(hidden.device, non_blocking=True)
    flat_targets = labels[:, 1:].reshape(-1).to(hidden.device, non_blocking=True)
    n = flat_targets.numel()
    safe = positions.clamp_max(n - 1)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, safe)
    targets = flat_targets.index_select(0, safe).masked_fill(positions >= n, -100)  # -100: cross_entropy's ignore
    return F.cross_entropy(lm_head(h).float(), targets)


def register_auto() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``model_type = "gkabench"`` (idempotent)."""
    try:
        AutoConfig.register("gkabench", GKABenchConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(GKABenchConfig, GKABenchForCausalLM)
    except ValueError:
        pass


register_auto()
