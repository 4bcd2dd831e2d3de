"""Configuration of the gkabench causal LM: a stack of blocks, each a registered token mixer plus a SwiGLU MLP.

    cfg = GKABenchConfig(vocab_size=259, hidden_size=256, num_layers=4, mixer="gka,gka,gka,attention",
                         mixer_options={"gka": {"use_alpha": False}}, num_heads=2, head_dim=128)
    cfg.layer_mixers   # ['gka', 'gka', 'gka', 'attention']

``mixer`` is one name, a comma string or a list; it is repeated (cyclically) to ``num_layers``, so ``"gka"``
gives an all-GKA model and ``"gka,gka,gka,attention"`` a 3:1 hybrid. ``mixer_options`` maps a mixer name to
keyword arguments of its constructor (see each module under ``gkabench/layers``). ``num_heads`` / ``head_dim``
left as None take each mixer's own defaults at ``hidden_size``.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def default_intermediate_size(hidden_size: int, multiple_of: int = 64) -> int:
    """SwiGLU width with the parameter count of a 4x MLP: ``8/3 * hidden`` rounded up to ``multiple_of``."""
    n = int(hidden_size * 8 / 3)
    return multiple_of * ((n + multiple_of - 1) // multiple_of)


def expand_pattern(mixer: str | list[str] | tuple[str, ...], num_layers: int) -> list[str]:
    """``"gka,attention"`` / ``["gka", "attention"]`` -> one mixer name per layer, the pattern repeated."""
    names = [t.strip() for t in mixer.split(",")] if isinstance(mixer, str) else [str(t).strip() for t in mixer]
    names = [n for n in names if n]
    if not names:
        raise ValueError("mixer pattern is empty; pass e.g. mixer='gka' or mixer='gka,gka,gka,attention'")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return [names[i % len(names)] for i in range(num_layers)]


class GKABenchConfig(PretrainedConfig):
    """HF config (``model_type = "gkabench"``); the fields below are saved to ``config.json``."""

    model_type = "gkabench"
    # Names generic HF code (and lm-eval) looks for.
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    vocab_size: int = 259
    hidden_size: int = 256
    num_layers: int = 2
    mixer: str | list[str] = "gka"
    mixer_options: dict | None = None
    num_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None  # SwiGLU width; None: 8/3 x hidden; 0: no MLP (mixer-only blocks, as Zoology's MQAR sweep configs)
    rms_norm_eps: float = 1e-6
    # > 0: learned absolute position embeddings for this many positions, added to the token embeddings (GPT-2 /
    # Zoology style; Zoology's MQAR attention baseline has them and no RoPE). 0: none, each mixer sees order itself.
    # Not named max_position_embeddings: generic code (lm-eval) reads that as the model's context limit.
    learned_positions: int = 0
    embed_dropout: float = 0.0  # dropout on the input embeddings while training (Zoology's default: 0.1)
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    backend: str = "auto"  # mixer backend: auto (Triton on CUDA), reference, triton
    use_cache: bool = True
    # Special token ids come from the tokenizer (the byte tokenizer's are 256 / 257 / 258); None for MQAR.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # Store the expanded per-layer list so a saved config states every layer's mixer explicitly.
        self.mixer = expand_pattern(self.mixer, self.num_layers)
        self.mixer_options = {k: dict(v) for k, v in (self.mixer_options or {}).items()}
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        super().__post_init__(**kwargs)

    @property
    def layer_mixers(self) -> list[str]:
        return list(self.mixer)

    def options_for(self, name: str) -> dict:
        """Constructor options for mixer ``name`` (empty when none were given)."""
        return dict(self.mixer_options.get(name, {}))
