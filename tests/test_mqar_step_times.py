"""scripts/mqar_step_times.py: milliseconds per MQAR step per device session, and the share spent waiting for data;
scripts/mqar_init_memory.py: each decaying head's memory at initialisation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_step_times_group_by_session_and_count_a_carried_run_once(tmp_path):
    env = {"device_type": "cuda", "device": "NVIDIA H200", "git_sha": "abcdef123456"}
    base = dict(seq_len=256, num_pairs=64, dim=64, num_heads=1, steps=3000, steps_done=3000, env=env, accuracy=0.5)
    rows = [
        {**base, "mixer": "gka", "lr": 3e-3, "elapsed_s": 120.0, "cuda_graph": "on from step 4", "data_wait_s": 30.0, "concurrent_runs": 2},
        {**base, "mixer": "gla", "lr": 3e-3, "elapsed_s": 150.0, "cuda_graph": "on from step 4", "data_wait_s": 15.0, "concurrent_runs": 2},
        {**base, "mixer": "gla", "lr": 1e-2, "elapsed_s": 90.0},  # eager, before concurrent_runs was recorded
        {**base, "mixer": "gka", "lr": 1e-2, "elapsed_s": 60.0, "env": {**env, "device_type": "cpu"}},  # not a GPU row
        {**base, "mixer": "gka", "lr": 1e-3, "error": "OOM"},
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[0]) + "\n")  # the same run carried into another sweep's file
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mqar_step_times.py"), str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    ).stdout  # fmt: skip
    lines = [line.split() for line in out.strip().splitlines()[1:]]
    graphed = next(line for line in lines if line[4] == "True")
    eager = next(line for line in lines if line[4] == "False")
    assert len(lines) == 2
    # graphed: 2 runs (the carried copy counted once), 40 and 50 ms per step, median wait share of 0.25 and 0.1
    assert graphed[5] == "2.0" and graphed[6] == "2" and float(graphed[7]) == 40.0 and float(graphed[9]) == 50.0
    assert abs(float(graphed[10]) - 0.175) < 1e-9
    assert eager[6] == "1" and float(eager[8]) == 30.0 and eager[10] == "NaN"


def test_runs_lists_the_runs_that_shared_each_gpu(tmp_path):
    """--runs: each timed run with its neighbours on the same GPU and the share of its time they overlapped; a run
    on the other GPU of the machine, or with no recorded times, is no neighbour."""
    env = {"device_type": "cuda", "device": "NVIDIA H200", "git_sha": "abcdef123456", "cuda_visible_devices": "0"}
    base = dict(seq_len=256, num_pairs=64, num_heads=1, steps=3000, steps_done=1000, accuracy=0.5, lr=1e-3)
    rows = [
        {**base, "mixer": "gka", "dim": 64, "elapsed_s": 100.0, "started_at": 1000.0, "finished_at": 1100.0, "env": env},
        {**base, "mixer": "gla", "dim": 256, "elapsed_s": 50.0, "started_at": 1050.0, "finished_at": 1100.0, "env": env},
        {**base, "mixer": "mamba2", "dim": 64, "elapsed_s": 100.0, "started_at": 1000.0, "finished_at": 1100.0,
         "env": {**env, "cuda_visible_devices": "1"}},  # the machine's other GPU
        {**base, "mixer": "mesanet", "dim": 64, "elapsed_s": 100.0, "env": env},  # before times were recorded
    ]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mqar_step_times.py"), "--runs", str(tmp_path / "a.jsonl")],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    ).stdout  # fmt: skip
    lines = {line.split()[2]: line for line in out.strip().splitlines()[1:]}
    assert set(lines) == {"gka", "gla", "mamba2"}
    assert "100.0" in lines["gka"] and "gla d256 T256 (50%)" in lines["gka"]
    assert "50.0" in lines["gla"] and "gka d64 T256 (100%)" in lines["gla"]
    assert lines["mamba2"].rstrip().endswith("-")


def test_init_memory_reads_each_heads_half_life():
    """scripts/mqar_init_memory.py: a head with A * dt = ln 2 forgets half its state per token (half-life 1); with
    A * dt 100x smaller, 100 tokens."""
    import importlib.util
    import math

    import torch

    from gkabench.models import GKABenchForCausalLM, preset_config

    spec = importlib.util.spec_from_file_location("mqar_init_memory", ROOT / "scripts" / "mqar_init_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = GKABenchForCausalLM(preset_config("tiny", mixer="gka", vocab_size=32, num_layers=2))
    softplus_inv_1 = math.log(math.e - 1)  # softplus(x) = 1
    with torch.no_grad():
        for layer, scale in zip(model.model.layers, (1.0, 0.01)):
            layer.mixer.A_log.fill_(math.log(math.log(2) * scale))
            layer.mixer.dt_bias.fill_(softplus_inv_1)
    lives = mod.half_lives(model)
    heads = model.model.layers[0].mixer.A_log.numel()
    assert [len(h) for h in lives] == [heads, heads]
    # the parameters are float32: relative 1e-6 is their rounding
    assert all(abs(h - 1.0) < 1e-5 for h in lives[0]) and all(abs(h / 100.0 - 1.0) < 1e-5 for h in lives[1])
