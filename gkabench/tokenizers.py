"""Tokenizers that never touch the network.

The default is a byte-level tokenizer built in code: ids 0..255 are the bytes of the UTF-8 text (id == byte
value), then ``<bos>`` = 256, ``<eos>`` = 257, ``<pad>`` = 258 (vocab 259). Any text round-trips exactly. It is a
transformers fast tokenizer (``tokenizers`` library underneath), so ``save_pretrained`` writes a
``tokenizer.json`` that loads back with :func:`load_tokenizer` or ``AutoTokenizer.from_pretrained(dir)``.

    tok = load_tokenizer(None)                    # byte-level, built here
    tok = load_tokenizer("path/to/tokenizer.json")  # any local tokenizers file
    tok = load_tokenizer("path/to/checkpoint")      # a directory holding tokenizer.json / tokenizer_config.json
"""

from __future__ import annotations

from pathlib import Path

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
BYTE_VOCAB_SIZE = 259


def _byte_to_char() -> dict[int, str]:
    """Each byte value -> one printable unicode character (the byte-level alphabet of the ``tokenizers``
    ByteLevel pre-tokenizer/decoder): printable latin-1 bytes map to themselves, the rest to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer():
    """The built-in byte-level tokenizer (a ``PreTrainedTokenizerFast``), vocab 259, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _byte_to_char().items()}
    # BPE with no merges over the byte alphabet = one token per byte; ByteLevel without the regex split keeps
    # whitespace as ordinary bytes, so encode/decode is the identity on any UTF-8 text.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([BOS, EOS, PAD])  # ids 256, 257, 258 in this order
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tok.model_max_length = 1 << 30  # no length limit of its own; the model decides
    return tok


def load_tokenizer(path: str | Path | None = None):
    """``None`` -> the byte-level tokenizer; a ``tokenizer.json`` file or a directory holding one (or a saved
    transformers tokenizer) -> that tokenizer, loaded with ``local_files_only`` (never the hub)."""
    if path is None or str(path) in ("", "byte", "bytes"):
        return byte_tokenizer()
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file():
        if p.suffix != ".json":
            raise ValueError(f"tokenizer {p}: expected a tokenizer.json file or a directory; pass --tokenizer DIR_OR_JSON")
        return _with_known_specials(_fast_from_file(p))
    if p.is_dir():
        if (p / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        if (p / "tokenizer.json").exists():
            return _with_known_specials(_fast_from_file(p / "tokenizer.json"))
        raise FileNotFoundError(f"no tokenizer.json or tokenizer_config.json in {p}; pass a tokenizer file or omit --tokenizer for bytes")
    raise FileNotFoundError(f"tokenizer {p} does not exist; pass a local tokenizer.json or directory (no hub downloads)")


def _fast_from_file(p: Path):
    """A ``tokenizer.json`` as a fast tokenizer; a file that is not one (any other JSON, a corrupt file) gives a
    one-line ValueError naming it instead of the tokenizers library's traceback."""
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(p))
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exceptions
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"tokenizer {p} could not be read as a tokenizer.json ({why}); pass a tokenizer.json saved by the "
                         "tokenizers library, a tokenizer directory, or omit --tokenizer for bytes") from None


def _with_known_specials(tok):
    """A bare tokenizer.json carries no bos/eos/pad roles; give them to our own special tokens when present."""
    vocab = tok.get_vocab()
    for role, name in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD)):
        if getattr(tok, role) is None and name in vocab:
            setattr(tok, role, name)
    return tok
