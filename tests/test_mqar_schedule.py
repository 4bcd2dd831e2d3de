"""The deadline gate of the MQAR sweep: run-time estimates from finished rows, and runs passed over near the end."""

import time

import pytest

H200 = {"device": "NVIDIA H200", "device_type": "cuda"}


def row(mixer, dim, T, elapsed, steps_done=3000, device="NVIDIA H200", device_type="cuda", **extra):
    return {"mixer": mixer, "dim": dim, "seq_len": T, "lr": 3e-3, "elapsed_s": elapsed, "steps": 3000,
            "steps_done": steps_done, "env": {"device": device, "device_type": device_type}, **extra}  # fmt: skip


def run(mixer, dim, T):
    return {"mixer": mixer, "dim": dim, "seq_len": T, "lr": 1e-3}


def test_estimate_prefers_the_closest_comparable_runs():
    from gkabench.tasks.mqar_schedule import ESTIMATE_EXTRA_S as extra
    from gkabench.tasks.mqar_schedule import ESTIMATE_MARGIN as m
    from gkabench.tasks.mqar_schedule import LONGER_FACTOR, estimate_run_seconds

    rows = [
        row("gka", 128, 512, 100.0), row("gka", 128, 512, 120.0), row("mamba2", 128, 512, 170.0),
        row("gla", 64, 256, 40.0), row("gla", 64, 256, 30.0, steps_done=1000),  # early stop: counts as 90 s
        row("gka", 128, 512, 900.0, device="NVIDIA A100"),  # another GPU model: ignored
        row("gka", 128, 512, 900.0, error="OOM"),  # failed: ignored
    ]  # fmt: skip
    assert estimate_run_seconds(run("gka", 128, 512), rows, H200) == pytest.approx(m * 120 + extra)  # same mixer
    assert estimate_run_seconds(run("gla", 128, 512), rows, H200) == pytest.approx(m * 170 + extra)  # any mixer there
    # a variant with no row of its own: its base mixer's rows there, before other mixers' (gka_plain runs GKA's kernels)
    assert estimate_run_seconds(run("gka_plain", 128, 512), rows, H200) == pytest.approx(m * 120 + extra)
    assert estimate_run_seconds(run("gla", 256, 512), rows, H200) == pytest.approx(m * 1.25 * 170 + extra)  # any dim
    assert estimate_run_seconds(run("gla", 64, 256), rows, H200) == pytest.approx(m * 90 + extra)
    assert estimate_run_seconds(run("gka", 64, 1024), rows, H200) == pytest.approx(m * 2 * 170 + extra)  # length ratio
    # the same mixer and dim one length down, scaled by the ratio x LONGER_FACTOR
    assert estimate_run_seconds(run("gka", 128, 1024), rows, H200) == pytest.approx(m * LONGER_FACTOR * 2 * 120 + extra)
    # a run of 4x the rows' steps takes 4x as long at their pace
    assert estimate_run_seconds({**run("gka", 128, 512), "steps": 12000}, rows, H200) == pytest.approx(m * 4 * 120 + extra)
    assert estimate_run_seconds(run("gka", 64, 128), rows, {"device": "NVIDIA H100", "device_type": "cuda"}) is None
    cpu = {"device": "CPU (x86_64, 2 threads)", "device_type": "cpu"}
    cpu_rows = [row("gka", 16, 24, 5.0, device="CPU (x86_64, 1 threads)", device_type="cpu")]
    assert estimate_run_seconds(run("gka", 16, 24), cpu_rows, cpu) == pytest.approx(m * 5 + extra)  # any CPU


def test_estimate_counts_graphed_and_eager_rows_alike():
    """Graphed steps were no faster than eager ones in the sweep (H200): an estimate takes the longest run of either."""
    from gkabench.tasks.mqar_schedule import ESTIMATE_EXTRA_S as extra
    from gkabench.tasks.mqar_schedule import ESTIMATE_MARGIN as m
    from gkabench.tasks.mqar_schedule import estimate_run_seconds

    rows = [row("gka", 128, 256, 150.0), row("gka", 128, 256, 50.0, cuda_graph="on from step 4")]
    assert estimate_run_seconds(run("gka", 128, 256), rows, H200) == pytest.approx(m * 150 + extra)
    assert estimate_run_seconds(run("gka", 128, 256), rows[1:], H200) == pytest.approx(m * 50 + extra)


def test_read_deadline(tmp_path):
    from gkabench.tasks.mqar_schedule import read_deadline

    path = tmp_path / "deadline"
    assert read_deadline(path) is None
    path.write_text("1800000000.5\n")
    assert read_deadline(path) == 1800000000.5
    path.write_text("")  # touched by hand: a stop signal
    assert abs(read_deadline(path) - time.time()) < 5


def tiny_sweep(tmp_path, lrs):
    from gkabench.tasks.mqar_sweep import SweepConfig

    return SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=lrs, vocab_size=32, steps=3,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="m",
    )  # fmt: skip


@pytest.mark.parametrize("jobs", [1, 2])
def test_deadline_starts_only_runs_that_fit(tmp_path, jobs):
    """No finished row to estimate from: nothing starts once a deadline is set. With one row: a far deadline lets
    the rest start, one closer than a run's estimate starts none, and the rows already there stay."""
    from gkabench.tasks.mqar_sweep import read_rows, run_mqar_sweep

    deadline = tmp_path / "deadline"
    deadline.write_text(str(time.time() + 3600))
    assert run_mqar_sweep(tiny_sweep(tmp_path, [1e-2]), jobs=jobs, deadline_file=deadline) == []
    assert run_mqar_sweep(tiny_sweep(tmp_path, [1e-2]), jobs=jobs) != []  # no deadline file given: runs
    deadline.write_text(str(time.time() + 5))  # under ESTIMATE_EXTRA_S alone
    assert len(run_mqar_sweep(tiny_sweep(tmp_path, [1e-2, 3e-3]), jobs=jobs, deadline_file=deadline)) == 1
    deadline.write_text(str(time.time() + 3600))
    rows = run_mqar_sweep(tiny_sweep(tmp_path, [1e-2, 3e-3, 1e-3]), jobs=jobs, deadline_file=deadline)
    assert len(rows) == 3 and len(read_rows(tmp_path / "res" / "m.jsonl")) == 3


def test_gate_says_why_a_run_waits(tmp_path):
    from gkabench.io import append_jsonl
    from gkabench.tasks.mqar_schedule import DeadlineGate

    jsonl, deadline, said = tmp_path / "m.jsonl", tmp_path / "deadline", []
    gate = DeadlineGate(deadline, jsonl, H200, log=lambda msg, **kw: said.append(msg))
    assert gate(run("gka", 128, 512))  # no deadline yet
    deadline.write_text(str(time.time() + 100))
    append_jsonl(jsonl, row("gka", 128, 512, 200.0))
    assert not gate(run("gka", 128, 512)) and "needs ~230 s" in said[-1]
    assert not gate(run("gka", 128, 128))  # a shorter length with no row at or below it: no estimate, no start
    assert "no finished run" in said[-1]
    deadline.write_text(str(time.time() + 400))
    assert gate(run("gka", 128, 512))


def test_planning_uses_medians_on_the_most_common_gpu():
    from gkabench.tasks.mqar_schedule import estimate_run_seconds, planned_seconds

    rows = [row("gka", 128, 512, 100.0), row("gka", 128, 512, 120.0), row("gka", 128, 512, 400.0),
            row("gla", 64, 256, 50.0), row("gka", 64, 256, 999.0, device="NVIDIA A100")]  # fmt: skip
    assert estimate_run_seconds(run("gka", 128, 512), rows, H200, typical=True) == 120.0
    name, seconds, unknown = planned_seconds([run("gka", 128, 512), run("gla", 64, 256), run("gla", 64, 1024)], rows)
    assert name == "NVIDIA H200" and unknown == 0 and seconds == 120.0 + 50.0 + 2 * 120.0  # 1024 from 512's median x2
    assert planned_seconds([run("gka", 128, 512)], [row("gka", 16, 24, 5.0, device="CPU", device_type="cpu")]) is None


def test_a_long_run_is_passed_over_and_a_shorter_one_after_it_starts(tmp_path):
    """The sweep goes on down its list after a run that does not fit: a shorter one later may still start."""
    from gkabench.io import append_jsonl
    from gkabench.tasks.mqar_schedule import DeadlineGate

    jsonl, deadline = tmp_path / "m.jsonl", tmp_path / "deadline"
    append_jsonl(jsonl, row("gka", 128, 512, 150.0))
    append_jsonl(jsonl, row("gka", 128, 256, 40.0))
    deadline.write_text(str(time.time() + 100))
    gate = DeadlineGate(deadline, jsonl, H200, log=lambda *a, **k: None)
    todo = [run("gka", 128, 512), run("gla", 128, 512), run("gka", 128, 256), run("gla", 128, 256)]
    assert [gate(r) for r in todo] == [False, False, True, True]  # 175 s > 100 s; 54 s fits


def test_a_side_sweep_with_no_rows_is_timed_from_the_other_sweeps_in_its_folder(tmp_path):
    """A new side sweep (own file, no finished run yet) is estimated from the grid's rows of the same batch size,
    scaled to its steps; with no estimate it could never start once a deadline is set."""
    from gkabench.io import append_jsonl
    from gkabench.tasks.mqar_schedule import ESTIMATE_EXTRA_S as extra
    from gkabench.tasks.mqar_schedule import ESTIMATE_MARGIN as m
    from gkabench.tasks.mqar_schedule import DeadlineGate, planned_seconds
    from gkabench.tasks.mqar_sweep import read_rows

    grid, side, deadline = tmp_path / "mqar.jsonl", tmp_path / "mqar_side.jsonl", tmp_path / "deadline"
    append_jsonl(grid, row("attention", 128, 256, 70.0, batch_size=256))
    append_jsonl(grid, row("attention", 128, 256, 900.0, batch_size=64))  # another batch size: not comparable
    said = []
    gate = DeadlineGate(deadline, side, H200, log=lambda *a, **k: said.append(a[0]))
    long_run = {**run("attention", 128, 256), "steps": 12000, "batch_size": 256}
    deadline.write_text(str(time.time() + m * 4 * 70 + extra + 30))
    assert gate(long_run)  # 4 x 70 s (x margin) fits
    deadline.write_text(str(time.time() + m * 4 * 70 + extra - 30))
    assert not gate(long_run) and f"needs ~{m * 4 * 70 + extra:.0f} s" in said[-1]
    name, seconds, unknown = planned_seconds([long_run], [], read_rows(grid))
    assert name == "NVIDIA H200" and unknown == 0 and seconds == pytest.approx(4 * 70.0)
