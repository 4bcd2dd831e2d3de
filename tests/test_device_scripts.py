"""The device-machine scripts (``scripts/``) run only on the H200, where a syntax error costs a whole call of
scarce device time: here every Python script must compile, every shell script must parse (``bash -n``), and the
orchestrator must run its jobs, pin them to CPU slices and stop them at its deadline without dying itself
(session 4 lost a call to a deadline that killed the orchestrator)."""

from __future__ import annotations

import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "scripts").iterdir())


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.suffix == ".py"], ids=lambda p: p.name)
def test_python_scripts_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.suffix == ".sh"], ids=lambda p: p.name)
def test_shell_scripts_parse(path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_orchestrator_runs_jobs_and_survives_its_deadline(tmp_path):
    env = dict(
        os.environ, OUT=str(tmp_path / "out"), TRITON_CACHE_DIR=str(tmp_path / "tc"), DEADLINE_S="10",
        GKABENCH_PRELUDE_DONE="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    )  # fmt: skip
    # a job that outlives the deadline (its command names what the old pkill pattern matched), and a quick one
    jobs = ["0:sleep 120 # gkabench.cli gka_kernels_device", "1@1:echo quick-job-done"]
    proc = subprocess.run(["bash", "scripts/device_multi.sh", *jobs], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "deadline 10s: stopping jobs still running" in proc.stdout and "quick-job-done" in proc.stdout
    assert (tmp_path / "out" / "multi_results.tgz").stat().st_size > 0  # the archive was written
    if shutil.which("pgrep"):
        assert subprocess.run(["pgrep", "-f", "sleep 120 # gkabench"], capture_output=True).returncode != 0  # no orphan
