"""gkabench.kernels.parallel_compile: the Autotuner patch that pre-compiles configs on a thread pool.

On CPU the compile itself cannot run (no GPU target); these tests check the plumbing under Triton's
interpreter: the hook sees every pruned config of a tuning round once, with the launch's own arguments, a
cached key does not pre-compile again, results are unchanged, and a failing pre-compile never breaks a launch.
The speed-up is a device measurement (the module doc has the offline sm_90 one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, torch, triton, triton.language as tl
from triton.runtime import autotuner
from gkabench.kernels import parallel_compile as pc

autotuner.Autotuner.do_bench = property(lambda self: (lambda fn, quantiles=None: (fn(), [1.0, 1.0, 1.0])[1]))
seen = []
real = pc.precompile
def spy(tuner, configs, args, kwargs, workers):
    seen.append({"n": len(configs), "nargs": len(args), "kw": sorted(kwargs), "workers": workers})
    return real(tuner, configs, args, kwargs, workers)
pc.precompile = spy
assert pc.enable(workers=4) and pc.enable(workers=4)  # idempotent

configs = [triton.Config({"BLOCK": b}, num_warps=1) for b in (16, 32, 64)]

@triton.autotune(configs=configs, key=["n"])
@triton.jit
def scale(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, 2.0 * tl.load(x + i, mask=i < n), mask=i < n)

x = torch.arange(100, dtype=torch.float32)
y = torch.empty_like(x)
scale[lambda meta: (triton.cdiv(100, meta["BLOCK"]),)](x, y, 100)
ok1 = bool(torch.equal(y, 2 * x))
y.zero_()
scale[lambda meta: (triton.cdiv(100, meta["BLOCK"]),)](x, y, 100)  # same key: tuned already
ok2 = bool(torch.equal(y, 2 * x))

class Broken:
    class fn:
        @staticmethod
        def warmup(*a, **k):
            raise RuntimeError("no compiler here")
n_broken = real(Broken(), configs, (x,), {"grid": 1, "warmup": False}, 4)
print(json.dumps({"seen": seen, "ok1": ok1, "ok2": ok2, "broken": n_broken, "stats": pc.stats()}))
"""


def test_autotuner_patch_precompiles_each_tuning_round_once_and_changes_no_result():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok1"] and out["ok2"]
    assert len(out["seen"]) == 1, out["seen"]  # one tuning round: the second launch had the key cached
    seen = out["seen"][0]
    assert seen["n"] == 3 and seen["nargs"] == 3 and seen["workers"] == 4
    assert out["broken"] == 0  # a warmup that raises: nothing submitted, nothing raised


def test_workers_from_env(monkeypatch):
    from gkabench.kernels import parallel_compile as pc

    monkeypatch.setenv("GKABENCH_PARALLEL_COMPILE", "0")
    assert pc._workers_from_env() == 0
    monkeypatch.setenv("GKABENCH_PARALLEL_COMPILE", "12")
    assert pc._workers_from_env() == 12
    monkeypatch.setenv("GKABENCH_PARALLEL_COMPILE", "x")
    assert pc._workers_from_env() == 0
    monkeypatch.delenv("GKABENCH_PARALLEL_COMPILE")
    assert 1 <= pc._workers_from_env() <= 8
