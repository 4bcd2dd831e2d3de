"""gkabench: benchmark and evaluation harness for Gated KalmaNet (GKA) and the mixers it competes with.

``import gkabench`` stays cheap (no torch, no transformers) but arranges two registrations for the moment they
matter, so that other tools load gkabench checkpoints:

- transformers: ``AutoConfig`` / ``AutoModelForCausalLM`` learn ``model_type = "gkabench"`` when
  ``transformers.models.auto`` is first imported (or now, when it already is); this is what
  ``lm_eval --model hf --model_args pretrained=DIR`` needs.
- lm-eval: the model name ``gkabench`` (:class:`gkabench.lm_eval_bridge.GKABenchLM`) is added to lm-eval's model
  registry as a lazy placeholder when ``lm_eval.api.registry`` is first imported (or now).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings


def _register_hf_auto() -> None:
    try:
        from . import models  # noqa: F401  (its import calls register_auto())
    except Exception as exc:  # noqa: BLE001  (never break someone else's import; say why the registration is missing)
        warnings.warn(f"gkabench: AutoConfig/AutoModelForCausalLM registration failed ({exc}); call "
                      "gkabench.models.register_auto() after importing transformers", stacklevel=2)  # fmt: skip


def _register_lm_eval() -> None:
    try:
        import lm_eval.models  # noqa: F401  (lm-eval's own lazy entries first: an empty registry triggers them)
        from lm_eval.api.registry import model_registry

        if "gkabench" not in model_registry:
            model_registry.register("gkabench", target="gkabench.lm_eval_bridge:GKABenchLM")
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"gkabench: lm-eval model registration failed ({exc})", stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run a callback once a given module has finished executing (a post-import hook)."""

    def __init__(self, callbacks: dict):
        self.callbacks = callbacks

    def find_spec(self, name, path=None, target=None):
        if name not in self.callbacks:
            return None
        callback = self.callbacks.pop(name)  # popped first: the real lookup below must not come back here
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_register  # this spec's own loader object
        return spec


def _install() -> None:
    pending = {}
    for module, callback in (
        ("transformers.models.auto", _register_hf_auto),
        ("lm_eval.api.registry", _register_lm_eval),
    ):
        if module in sys.modules:
            callback()
        else:
            pending[module] = callback
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(pending))


_install()
