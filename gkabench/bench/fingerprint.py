"""Which code a speed row measured, so that ``--resume`` re-measures a cell whose code has changed.

A row records ``code``: for the core op, fla's version for fla ops, a hash of our own kernels' sources for
gkabench ops (e.g. every file of ``gkabench/kernels/gka/``), the op's name for PyTorch ops (torch's version is in
the row's environment); for the full layer, that plus a hash of the layer's module and the shared layer code
(``layers/base.py``, ``layers/blocks.py``). Resume counts a row as done only when its ``code`` equals what the
cell would measure now: after a kernel or layer change the stale numbers are measured again, never reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from functools import lru_cache
from pathlib import Path

SHARED_LAYER_FILES = ("base.py", "blocks.py")  # code every layer runs (cache protocol, short convs, norms)


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def _module_files(dotted: str) -> list[Path] | None:
    """The source files of the longest importable module prefix of ``dotted`` (a package: all its .py files)."""
    parts = dotted.split(".")
    while parts:
        try:
            spec = importlib.util.find_spec(".".join(parts))
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            if spec.submodule_search_locations:
                return sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
            return [Path(spec.origin)]
        parts.pop()
    return None


def _fla_version() -> str:
    try:
        from importlib.metadata import version

        return version("fla-core")
    except Exception:  # noqa: BLE001 - not installed: the op cannot run anyway
        return "absent"


@lru_cache(maxsize=None)
def op_fingerprint(mixer: str) -> str:
    """What the core op of ``mixer`` runs, as a short string (see the module doc)."""
    from ..layers import get_mixer_spec

    op = get_mixer_spec(mixer).cuda_op.split()[0]
    if op.startswith("fla."):
        return f"fla-{_fla_version()}"
    if op.startswith("gkabench."):
        files = _module_files(op)
        return f"{op.rsplit('.', 1)[0]}@{_hash_files(files)}" if files else op
    return op


@lru_cache(maxsize=None)
def code_fingerprint(mixer: str, level: str) -> str:
    """``op_fingerprint`` for ``level="op"``; for ``"layer"`` also the layer's own and the shared layer code."""
    if level != "layer":
        return op_fingerprint(mixer)
    from ..layers import get_mixer_spec

    layer_file = Path(inspect.getfile(get_mixer_spec(mixer).cls))
    shared = [layer_file.parent / name for name in SHARED_LAYER_FILES]
    return f"{op_fingerprint(mixer)}+layer@{_hash_files([layer_file, *shared])}"
