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


def _bg_env(tmp_path, **extra):
    return {
        **os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "TRITON_CACHE_DIR": str(tmp_path / "tc"),
        "GKABENCH_PRELUDE_DONE": "1", "NO_GUARD": "1", "NO_PACK": "1", "GPUS": "2", "JOBS": "1",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **extra,
    }  # fmt: skip


def _bg(verb, minutes, env, *args):
    return subprocess.run(["bash", "scripts/mqar_device_bg.sh", verb, str(minutes), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


TINY_SWEEP = ["--grid", "cpu", "--mixers", "attention", "--dims", "16", "--lengths", "24:4", "--vocab", "32",
              "--head-dim", "8", "--batch-size", "8", "--eval-examples", "16"]  # fmt: skip


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_background_sweep_brings_rows_back_across_calls(tmp_path):
    """start launches one sweep per 'GPU' (here 2 shards on the CPU) in sessions of their own and returns; collect
    finds them finished and brings back every shard's rows and the logs."""
    import json
    import tarfile

    env = _bg_env(tmp_path)
    # two sweeps one after the other (--then): lrs 1e-2, 3e-3 on both dims, then 2e-3 on the first only
    start = _bg("start", 0.3, env, *TINY_SWEEP, "--dims", "16,8", "--lrs", "1e-2,3e-3", "--steps", "2", "--then",
                *TINY_SWEEP, "--lrs", "2e-3", "--steps", "2")  # fmt: skip
    assert start.returncode == 0 and "2 sweep(s) started" in start.stdout, start.stdout[-2000:] + start.stderr[-2000:]
    collect = _bg("collect", 1.5, env)  # returns as soon as the sweeps have ended
    assert collect.returncode == 0 and "sweep not running" in collect.stdout, collect.stdout[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "mqar.jsonl").read_text().splitlines()]
    tiny = [r for r in rows if r["seq_len"] == 24]
    assert sorted((r["dim"], r["lr"]) for r in tiny) == [(8, 3e-3), (8, 1e-2), (16, 2e-3), (16, 3e-3), (16, 1e-2)]
    assert not any(r.get("error") for r in tiny)
    names = tarfile.open(tmp_path / "out" / "mqar_logs.tgz").getnames()
    assert {"mqar_gpu0.log", "mqar_gpu1.log"} <= set(names) and sum(n.endswith("log.jsonl") for n in names) == 5
    # collect with the options on a machine whose sweeps have ended (or a fresh one) starts them again: resumes
    again = _bg("collect", 1.5, env, *TINY_SWEEP, "--lrs", "2e-3,1e-3", "--steps", "2")
    assert "starting one with the options given" in again.stdout and "sweep not running" in again.stdout, again.stdout[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "mqar.jsonl").read_text().splitlines()]
    assert sorted((r["dim"], r["lr"]) for r in rows if r["seq_len"] == 24)[:2] == [(8, 3e-3), (8, 1e-2)]
    assert sum(r["seq_len"] == 24 for r in rows) == 6  # only (16, 1e-3) was new


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_background_sweep_uses_cuda_graphs_only_for_mixers_the_check_passed(tmp_path):
    """GRAPH=1: mqar_graph_check.py runs first; on this CPU no mixer can pass (no CUDA), so the sweep gets no
    --cuda-graph. A machine whose check passed a mixer (its log kept in WORK) passes --cuda-graph MIXER to the sweep,
    and the rows record what training did with it (here: eager, no CUDA device)."""
    import json
    import tarfile

    env = _bg_env(tmp_path, GRAPH="1", GPUS="1", GRAPH_CHECK="--mixers attention --dim 64 --seq-len 64 --pairs 8 --steps 2")
    start = _bg("start", 0.3, env, *TINY_SWEEP, "--lrs", "1e-2", "--steps", "2")
    assert start.returncode == 0 and "FAIL attention: graph off: needs a CUDA device" in start.stdout, start.stdout[-2000:]
    assert "cuda graphs: no mixer passed the check here; all runs eager" in start.stdout
    assert "--cuda-graph" not in (tmp_path / "work" / "sweeps_gpu0.sh").read_text()
    _bg("collect", 1.5, env)
    assert "graph_check.log" in tarfile.open(tmp_path / "out" / "mqar_logs.tgz").getnames()

    work2 = tmp_path / "w2"
    work2.mkdir()
    (work2 / "graph_check.log").write_text("pass attention: graph on from step 4\nGRAPH_MIXERS=attention\n")
    env2 = _bg_env(tmp_path, GRAPH="1", GPUS="1", WORK=str(work2), OUT=str(tmp_path / "out2"))
    start = _bg("start", 0.3, env2, *TINY_SWEEP, "--lrs", "3e-3", "--steps", "2")
    assert "cuda graphs: checked here, used for attention" in start.stdout, start.stdout[-2000:]
    assert "--cuda-graph attention" in (work2 / "sweeps_gpu0.sh").read_text()
    _bg("collect", 1.5, env2)
    rows = [json.loads(line) for line in (tmp_path / "out2" / "mqar.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["seq_len"] == 24]
    assert len(mine) == 1 and mine[0]["cuda_graph"] == "off: needs a CUDA device", mine


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_background_sweep_final_stops_it(tmp_path):
    """final touches the stop file, then stops runs still in flight at its end and leaves no process behind."""
    env = _bg_env(tmp_path, STOP_AT="0")
    # start waits ~10 s (its 0.5 minutes less 20 s), time for both shards to have a run in flight
    start = _bg("start", 0.5, env, *TINY_SWEEP, "--lrs", "1e-2,3e-3", "--steps", "100000", "--early-stop-acc", "0")
    assert start.returncode == 0 and "still running" in start.stdout, start.stdout[-2000:] + start.stderr[-2000:]
    final = _bg("final", 1.0, env)  # ends 50 s before its minute: stops the sweeps at ~10 s
    assert final.returncode == 0 and "stop file touched" in final.stdout and "sweep stopped" in final.stdout, final.stdout[-2000:]
    assert "sweep not running" in final.stdout
    assert "acc " not in final.stdout  # neither run finished: both were stopped in flight
    cut = final.stdout.split("runs cut in flight (the next sweep redoes them): ")[1].split("\n")[0].split()
    assert sorted(cut) == ["attention_d16_T24_P4_lr0.003", "attention_d16_T24_P4_lr0.01"], final.stdout[-2000:]
    if shutil.which("pgrep"):
        assert subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True).returncode != 0


def test_step_profile_runs_on_cpu_with_concurrent_processes(tmp_path):
    """scripts/mqar_step_profile.py (FUSED=measure on the device) end to end on the CPU: the per-mixer row, the
    eager-vs-fused loss agreement, 2 processes timed at once, and a verdict line for the shell to read."""
    import json

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "scripts/mqar_step_profile.py", "--device", "cpu", "--mixers", "attention", "--dim", "16",
         "--seq-len", "16", "--pairs", "2", "--batch", "2", "--steps", "2", "--procs", "2", "--timeout", "240",
         "--json", str(tmp_path / "p.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in ("FUSED_OK", "FUSED_NOT_OK")
    out = json.loads((tmp_path / "p.json").read_text())
    row, shared = out["rows"][0], out["concurrent"]
    assert row["mixer"] == "attention" and row["fused_err"] < 4e-3 and row["eager_ms"] > 0
    assert shared["procs"] == 2 and shared["off"]["steps_per_s"] > 0 and shared["auto"]["steps_per_s"] > 0


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_background_sweep_final_sets_a_deadline(tmp_path):
    """final writes its end into the deadline file: runs whose estimate (from the rows finished so far) does not fit
    before it are passed over, so the sweep winds down by itself instead of being killed with runs in flight."""
    env = _bg_env(tmp_path)
    lrs = "1e-2,9e-3,8e-3,7e-3,6e-3,5e-3,4e-3,3e-3,2e-3,1e-3"
    start = _bg("start", 0.4, env, *TINY_SWEEP, "--lrs", lrs, "--steps", "300", "--early-stop-acc", "0")  # ~2 s a run
    assert start.returncode == 0 and "2 sweep(s) started" in start.stdout, start.stdout[-2000:] + start.stderr[-2000:]
    final = _bg("final", 1.0, env)  # its end: 10 s in, the deadline 5 s before that, under any run's estimate
    assert final.returncode == 0 and "deadline set" in final.stdout and "sweep not running" in final.stdout, final.stdout[-2000:]
    logs = "".join(p.read_text() for p in (tmp_path / "work").glob("mqar_gpu*.log"))
    assert "not started before the deadline" in logs, logs[-2000:]
    import json

    rows = [json.loads(line) for line in (tmp_path / "out" / "mqar.jsonl").read_text().splitlines()]
    assert sum(r["seq_len"] == 24 for r in rows) < 10  # (the file is seeded with results/mqar's rows)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None, reason="no bash / setsid")
def test_background_sweep_collect_honours_the_session_end(tmp_path):
    """SESSION_MIN on collect writes the session's end into the deadline file before the last call: runs that
    would outlive the session are passed over and the sweep winds down by itself."""
    env = _bg_env(tmp_path)
    lrs = "1e-2,9e-3,8e-3,7e-3,6e-3,5e-3,4e-3,3e-3,2e-3,1e-3"
    start = _bg("start", 0.4, env, *TINY_SWEEP, "--lrs", lrs, "--steps", "300", "--early-stop-acc", "0")
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    collect = _bg("collect", 1.5, {**env, "SESSION_MIN": "0.05"})  # the session ends 3 s into this call
    assert collect.returncode == 0 and "session deadline set" in collect.stdout, collect.stdout[-2000:]
    assert "sweep not running" in collect.stdout, collect.stdout[-2000:]  # ended by itself, well before 1.5 minutes
    logs = "".join(p.read_text() for p in (tmp_path / "work").glob("mqar_gpu*.log"))
    assert "not started before the deadline" in logs, logs[-2000:]
