"""Compile an autotuned Triton kernel's configs in parallel before Triton benchmarks them.

Why: Triton's autotuner compiles the configs of a kernel one after another, inside its benchmark loop, on one
CPU core. On the H200 that is what first calls cost: fla's kernels carry up to 12 configs each, and in session 4
`gkabench check` of GLA, Mamba2 and MesaNet was still compiling after 400 s while 15 of the machine's 16 cores per
GPU sat idle. Triton (>= 3.4) can compile asynchronously (``triton.runtime._async_compile.AsyncCompileMode``),
and its compile releases the GIL in the heavy parts (MLIR and LLVM passes, ptxas): measured here with Triton 3.6
compiling six configs of a GKA scan kernel for sm_90 on a 2-core machine, 6.4-6.9 s serially vs 3.6-3.9 s on
two threads.

:func:`enable` patches :class:`triton.runtime.autotuner.Autotuner` so that when a tuning key has no result yet
(neither in memory nor in Triton's on-disk autotune cache), every pruned config is first compiled on a thread
pool (``JITFunction.warmup`` under ``AsyncCompileMode``: compiled and cached, not launched); Triton's own loop
then benchmarks them as before and picks the same way. Nothing else changes: a key with a cached result compiles
only the chosen config, as before; any failure in the pre-compile (an unsupported Triton, a config that does
not compile) is ignored and leaves Triton's own path to do what it always did.

Enabled by the CLI and the device scripts on CUDA; ``GKABENCH_PARALLEL_COMPILE=0`` turns it off,
``GKABENCH_PARALLEL_COMPILE=N`` sets the number of threads (default: the CPUs this process may use, at most 8).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_LOCK = threading.Lock()
_STATE = {"workers": 0, "precompiled": 0, "rounds": 0}


def _workers_from_env() -> int:
    raw = os.environ.get("GKABENCH_PARALLEL_COMPILE", "").strip()
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def precompile(autotuner, configs, args: tuple, kwargs: dict, workers: int) -> int:
    """Compile ``configs`` of ``autotuner`` for the call ``(args, kwargs)`` on ``workers`` threads; returns how
    many configs were submitted. Never raises: a failure here only means Triton compiles them itself later."""
    if workers < 2 or len(configs) < 2:
        return 0
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # Triton < 3.4: no asynchronous compilation
        return 0
    # the launch's own grid / warmup flags (``kernel[grid](...)`` passes them through the autotuner) are replaced
    kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    submitted = 0
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(configs))) as pool:
            with AsyncCompileMode(pool, ignore_errors=True):
                for cfg in configs:
                    try:
                        autotuner.fn.warmup(*args, grid=(1,), **kwargs, **cfg.all_kwargs())
                        submitted += 1
                    except Exception:  # noqa: BLE001 - this config is left to Triton's own loop
                        continue
    except Exception:  # noqa: BLE001 - e.g. another AsyncCompileMode active: fall back to Triton's serial path
        return submitted
    with _LOCK:
        _STATE["precompiled"] += submitted
        _STATE["rounds"] += 1
    return submitted


def enable(workers: int | None = None) -> bool:
    """Patch Triton's Autotuner (once per process) to pre-compile configs on ``workers`` threads (default from
    ``GKABENCH_PARALLEL_COMPILE``). Returns whether the patch is active."""
    workers = _workers_from_env() if workers is None else workers
    with _LOCK:
        if _STATE["workers"]:
            _STATE["workers"] = workers
            return workers >= 2
        try:
            from triton.runtime.autotuner import Autotuner
        except ImportError:
            return False
        if not all(hasattr(Autotuner, name) for name in ("run", "check_disk_cache", "prune_configs")):
            return False  # a Triton whose autotuner is built differently: leave it alone
        _STATE["workers"] = workers
        original_run, original_check, original_prune = Autotuner.run, Autotuner.check_disk_cache, Autotuner.prune_configs

        def run(self, *args, **kwargs):
            # remembered for the pre-compile (prune_configs and check_disk_cache do not see the call's arguments)
            self._gkabench_call = (args, kwargs)
            try:
                return original_run(self, *args, **kwargs)
            finally:
                self._gkabench_call = None

        def _precompile_pending(self, configs) -> None:
            call = getattr(self, "_gkabench_call", None)
            if call is not None and _STATE["workers"] >= 2:
                args, kwargs = call
                precompile(self, list(configs), args, kwargs, _STATE["workers"])

        def check_disk_cache(self, tuning_key, configs, bench_fn):
            # cache_results=True (fla's kernels, ours): bench_fn runs only when the disk has no result for the key
            def bench_after_precompile():
                _precompile_pending(self, configs)
                return bench_fn()

            return original_check(self, tuning_key, configs, bench_after_precompile)

        def prune_configs(self, kwargs):
            pruned = original_prune(self, kwargs)
            if not getattr(self, "cache_results", False):  # no disk cache: the benchmark follows at once
                _precompile_pending(self, pruned)
            return pruned

        Autotuner.run, Autotuner.check_disk_cache, Autotuner.prune_configs = run, check_disk_cache, prune_configs
    return workers >= 2


def stats() -> dict:
    """``{"workers", "precompiled", "rounds"}`` so far in this process (for logs)."""
    with _LOCK:
        return dict(_STATE)


def enable_on_cuda() -> bool:
    """:func:`enable` when a CUDA device is present (entry points call this; on CPU nothing compiles for a GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
    except ImportError:
        return False
    return enable()
