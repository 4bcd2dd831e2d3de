"""scripts/mqar_curves.py: training curves of each MQAR cell's best run, found in archived training logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _log(mixer, dim, lr, losses):
    config = {"mixer": mixer.split("_")[0], "hidden_size": dim, "seq_len": 64, "mqar_pairs": 8, "lr": lr,
              "batch_size": 16, "steps": 40, "mqar_curriculum": True}  # fmt: skip
    events = [{"event": "start", "config": config}] + [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]
    return "".join(json.dumps(e) + "\n" for e in events).encode()


def test_curves_pick_each_cells_best_run_and_find_where_it_left_the_plateau(tmp_path):
    row = dict(seq_len=64, num_pairs=8, vocab_size=256, steps=40, batch_size=16, curriculum=True, steps_done=40)
    rows = [
        {**row, "mixer": "gka_plain", "dim": 32, "lr": 1e-2, "accuracy": 0.9},
        {**row, "mixer": "gka_plain", "dim": 32, "lr": 3e-3, "accuracy": 0.2},
        {**row, "mixer": "gated_deltanet", "dim": 32, "lr": 3e-3, "accuracy": 0.0},
        {**row, "mixer": "gated_deltanet", "dim": 32, "lr": 3e-4, "accuracy": 0.5},  # off the grid's lrs: left out
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # plateau = ln(256 / 2) = 4.85; "left" = first loss under 4.05
    logs = {
        "runs/gka_plain_d32_T64_P8_lr0.01/log.jsonl": _log("gka_plain", 32, 1e-2, [4.9, 4.8, 3.0, 1.0]),
        "runs/gka_plain_d32_T64_P8_lr0.003/log.jsonl": _log("gka_plain", 32, 3e-3, [4.9, 4.9, 4.8, 4.0]),
        "runs/gated_deltanet_d32_T64_P8_lr0.003/log.jsonl": _log("gated_deltanet", 32, 3e-3, [4.9, 4.9]),
    }
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        for name, data in logs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "curves"
    proc = subprocess.run([sys.executable, "scripts/mqar_curves.py", str(tmp_path / "a.tgz"), "--rows", str(tmp_path / "rows.jsonl"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 cells, 2 with a training log" in proc.stdout
    csv = (out.with_suffix(".csv")).read_text().splitlines()
    got = {line.split(",")[0]: line.split(",") for line in csv[1:]}
    assert got["gka_plain"][4] == "0.01" and got["gka_plain"][7] == "30" and got["gka_plain"][8] == "1"  # the best lr's run
    assert got["gated_deltanet"][7] == ""  # never left the plateau
    assert out.with_suffix(".png").stat().st_size > 0
