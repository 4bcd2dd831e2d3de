"""The MQAR generator: disjoint key/value ranges, queries of earlier keys with their values, labels only on
answers, power-law placement, determinism, one-line errors; the scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gkabench.tasks.mqar import MQARConfig, curriculum_mixture, mqar_accuracy, mqar_batch, mqar_mixed_batch

CFG = MQARConfig(vocab_size=128, seq_len=96, num_pairs=12)


def test_shapes_and_ranges():
    b = mqar_batch(CFG, 32, seed=0)
    assert b.input_ids.shape == b.labels.shape == (32, 96)
    assert b.input_ids.dtype == b.labels.dtype == torch.int64
    P, half = CFG.num_pairs, CFG.vocab_size // 2
    keys, values = b.input_ids[:, 0 : 2 * P : 2], b.input_ids[:, 1 : 2 * P : 2]
    assert ((keys >= 1) & (keys < half)).all()
    assert ((values >= half) & (values < CFG.vocab_size)).all()
    for row in keys:
        assert len(set(row.tolist())) == P  # distinct keys within an example


def test_queries_are_earlier_keys_followed_by_their_values():
    b = mqar_batch(CFG, 16, seed=1)
    P = CFG.num_pairs
    for ids, labels in zip(b.input_ids.tolist(), b.labels.tolist()):
        table = dict(zip(ids[0 : 2 * P : 2], ids[1 : 2 * P : 2]))
        answer_pos = [t for t, y in enumerate(labels) if y != -100]
        assert len(answer_pos) == P  # every pair queried once by default
        asked = [ids[t - 1] for t in answer_pos]
        assert sorted(asked) == sorted(table)  # each key once
        for t in answer_pos:
            assert t > 2 * P  # in the query region
            assert labels[t] == ids[t] == table[ids[t - 1]]
        # everything else in the query region is filler
        query_tokens = {t for p in answer_pos for t in (p - 1, p)}
        assert all(ids[t] == 0 for t in range(2 * P, len(ids)) if t not in query_tokens)


def test_labels_only_on_answers_and_half_queries():
    cfg = MQARConfig(vocab_size=128, seq_len=96, num_pairs=12, num_queries=5)
    b = mqar_batch(cfg, 8, seed=2)
    assert ((b.labels != -100).sum(1) == 5).all()
    assert (b.labels[:, : 2 * cfg.num_pairs + 1] == -100).all()  # nothing to predict inside the pairs


def test_deterministic_by_seed():
    a, b, c = mqar_batch(CFG, 8, seed=(7, 3)), mqar_batch(CFG, 8, seed=(7, 3)), mqar_batch(CFG, 8, seed=(7, 4))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_curriculum_mixture_is_zoologys_scaled_to_the_target():
    mix = curriculum_mixture(MQARConfig(vocab_size=8192, seq_len=256, num_pairs=64))
    # Zoology's standard training set: 100k examples with 4 pairs, 20k each with 8, 16, 32, 64
    assert [(c.num_pairs, c.seq_len) for c, _ in mix] == [(4, 256), (8, 256), (16, 256), (32, 256), (64, 256)]
    assert [p for _, p in mix] == pytest.approx([5 / 9, 1 / 9, 1 / 9, 1 / 9, 1 / 9])
    small = curriculum_mixture(MQARConfig(vocab_size=64, seq_len=32, num_pairs=4))  # P/16, P/8 < 1 pair: dropped
    assert [c.num_pairs for c, _ in small] == [1, 2, 4] and sum(p for _, p in small) == pytest.approx(1.0)


def test_mixed_batch_draws_each_config_in_proportion_and_is_deterministic():
    mix = curriculum_mixture(CFG)  # pairs 1 (12 // 16 = 0 dropped), 3, 6, 12 at seq_len 96
    b = mqar_mixed_batch(mix, 4000, seed=(5, 0))
    assert b.input_ids.shape == b.labels.shape == (4000, 96)
    answers = (b.labels != -100).sum(1)  # every pair is queried once: answers per row = that row's pair count
    probs = {c.num_pairs: p for c, p in mix}
    assert set(answers.tolist()) == set(probs)
    for pairs, p in probs.items():
        frac = float((answers == pairs).float().mean())
        assert abs(frac - p) < 4 * (p * (1 - p) / 4000) ** 0.5  # within 4 binomial standard deviations
    assert not (answers[:20] == answers[0]).all()  # rows shuffled, not grouped by config
    again = mqar_mixed_batch(mix, 4000, seed=(5, 0))
    assert torch.equal(b.input_ids, again.input_ids) and torch.equal(b.labels, again.labels)
    with pytest.raises(ValueError, match="share seq_len"):
        mqar_mixed_batch([(CFG, 0.5), (MQARConfig(vocab_size=128, seq_len=64, num_pairs=4), 0.5)], 4, seed=0)


def test_curriculum_source_trains_on_the_mixture_and_evaluates_on_the_target():
    from gkabench.data import MQARSource

    src = MQARSource(CFG, seed=0, curriculum=True)
    train = src.global_batch(0, 256, "train")
    ev = src.global_batch(0, 64, "eval")
    assert len(set((train["labels"] != -100).sum(1).tolist())) > 1
    assert ((ev["labels"] != -100).sum(1) == CFG.num_pairs).all()


def test_prefetch_depth_changes_no_batch():
    """Batches made ahead in threads equal those made on demand, in order, after a jump (a resume) and when an eval
    batch comes between; the time spent waiting for them is counted."""
    from gkabench.data import MQARSource

    def stream(prefetch):
        src = MQARSource(CFG, seed=3, curriculum=True, prefetch=prefetch)
        steps = [0, 1, 2, 7, 8, 8, 9, 3]
        out = []
        for i, s in enumerate(steps):
            out.append(src.global_batch(s, 32, "train"))
            if i == 3:
                out.append(src.global_batch(0, 16, "eval"))
        return src, out

    src1, one = stream(1)
    src4, four = stream(4)
    assert src4.prefetch == 4 and len(src4._ahead) <= 4
    for a, b in zip(one, four):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    plain = MQARSource(CFG, seed=3, curriculum=True)._make(7, 32, "train")
    assert torch.equal(four[3]["input_ids"], plain["input_ids"])  # step 7 (the eval batch follows it)
    assert src1.wait_s > 0 and src4.wait_s > 0
    src4.close()  # no more threads; batches are still made, the same ones
    assert torch.equal(src4.global_batch(7, 32, "train")["input_ids"], plain["input_ids"]) and not src4._ahead


def test_power_law_places_queries_near_the_pairs():
    cfg = MQARConfig(vocab_size=512, seq_len=1024, num_pairs=16)
    b = mqar_batch(cfg, 256, seed=3)
    pos = (b.labels != -100).nonzero()[:, 1].numpy() - 2 * cfg.num_pairs
    region = cfg.seq_len - 2 * cfg.num_pairs
    first, last = (pos < region / 4).mean(), (pos >= 3 * region / 4).mean()
    assert first > 2 * last  # decreasing density along the query region
    assert pos.max() > region / 2  # but some reach far


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="raise --vocab"):
        MQARConfig(vocab_size=16, seq_len=64, num_pairs=12)
    with pytest.raises(ValueError, match="use seq_len >="):
        MQARConfig(vocab_size=128, seq_len=40, num_pairs=12)


def test_accuracy_scorer():
    b = mqar_batch(CFG, 4, seed=4)
    V = CFG.vocab_size
    perfect = torch.full((4, CFG.seq_len, V), -1e4)
    # logits at t predict labels at t + 1
    nxt = torch.cat([b.labels[:, 1:], torch.full((4, 1), -100)], 1)
    rows, cols = (nxt != -100).nonzero(as_tuple=True)
    perfect[rows, cols, nxt[rows, cols]] = 0.0
    assert mqar_accuracy(perfect, b.labels) == (4 * CFG.num_pairs, 4 * CFG.num_pairs)
    assert mqar_accuracy(torch.zeros(4, CFG.seq_len, V), b.labels)[0] < 4 * CFG.num_pairs
    np.testing.assert_equal(mqar_accuracy(perfect[:, :, :], b.labels)[1], 4 * CFG.num_pairs)


def test_sweep_appends_rows_resumes_and_writes_table_and_plot(tmp_path):
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    sweep = SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16, 32], lengths=[(24, 4)], lrs=[1e-2, 3e-3], vocab_size=32, steps=3,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="t",
    )  # fmt: skip
    seen = []
    rows = run_mqar_sweep(sweep, on_run=lambda run, row: seen.append(row is None))
    assert len(rows) == 4 and seen == [False] * 4
    assert all(0 <= r["accuracy"] <= 1 and r["env"]["torch"] for r in rows)
    # a rerun skips every finished run; one more lr only runs the new ones
    sweep.lrs = [1e-2, 3e-3, 1e-3]
    rows = run_mqar_sweep(sweep, on_run=lambda run, row: seen.append(row is None))
    assert len(rows) == 6 and seen[4:] == [True, True, False, True, True, False]
    assert len(read_rows(tmp_path / "res" / "t.jsonl")) == 6
    md = (tmp_path / "res" / "t.md").read_text()
    assert "| attention |" in md and "d=16" in md and "seq_len 24, 4 pairs" in md
    assert (tmp_path / "res" / "t.png").stat().st_size > 1000


def test_cli_user_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from gkabench.cli import app

    r = CliRunner().invoke(app, ["mqar", "--lengths", "256-64", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--lengths" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["mqar", "--mixers", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "valid names" in r.output
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "none.txt")])
    assert r.exit_code == 2 and "not found" in r.output


def test_cli_zero_batch_size_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from gkabench.cli import app

    for args, msg in ((["--batch-size", "0"], "--batch-size"), (["--steps", "0"], "--steps"), (["--dims", "0"], "--dims")):
        r = CliRunner().invoke(app, ["mqar", "--device", "cpu", "--out", str(tmp_path), *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)


def test_sweep_run_logs_go_under_out_and_torn_rows_do_not_block_resume(tmp_path, monkeypatch):
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "res"
    sweep = SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=[1e-2], vocab_size=32, steps=2,
        batch_size=8, eval_examples=8, head_dim=8, out_dir=str(out), name="t",
    )  # fmt: skip
    run_mqar_sweep(sweep)
    assert not (cwd / "runs").exists()  # nothing in the current directory
    assert list((out / "runs" / "t").glob("attention_d16_*/log.jsonl"))
    jsonl = out / "t.jsonl"
    with jsonl.open("a") as f:
        f.write('{"mixer": "attention", "dim": 32, "acc')  # a row torn by a kill
    sweep.dims = [16, 32]
    rows = run_mqar_sweep(sweep)  # resumes: the torn run is redone, its row on a line of its own
    assert len(rows) == 2 and {r["dim"] for r in rows} == {16, 32}
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 3 and lines[1].endswith('"acc') and len(read_rows(jsonl)) == 2
    # --run-dir puts them elsewhere
    sweep2 = SweepConfig.defaults_for(False, out_dir=str(out), name="t", run_dir=str(tmp_path / "logs"))
    assert sweep2.runs_root() == tmp_path / "logs" / "t"


def test_sweep_in_parallel_workers_and_shards_matches_serial(tmp_path):
    """--jobs 2 (spawned workers appending under a lock) and two --shard processes give the same rows as one
    serial sweep: same runs, each once, same accuracies (each run is seeded)."""
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_key, run_mqar_sweep

    def sweep(name):
        return SweepConfig.defaults_for(
            False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=[1e-2, 3e-3, 1e-3], vocab_size=32, steps=3,
            batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name=name,
        )  # fmt: skip

    serial = {run_key(r): r["accuracy"] for r in run_mqar_sweep(sweep("serial"))}
    parallel = run_mqar_sweep(sweep("par"), jobs=2)
    assert {run_key(r): r["accuracy"] for r in parallel} == serial
    assert len(read_rows(tmp_path / "res" / "par.jsonl")) == 3
    # rows say how many runs shared the device and how long each waited for its batches
    assert {r["concurrent_runs"] for r in parallel} == {2}
    assert all(0 <= r["data_wait_s"] <= r["elapsed_s"] for r in parallel)
    # and when each ran (wall clock), so runs that shared the device can be told apart afterwards
    # (0.1 s: both are rounded to a tenth)
    assert all(r["started_at"] - 0.1 <= r["finished_at"] <= r["started_at"] + r["elapsed_s"] + 1.0 for r in parallel)
    seen = []
    run_mqar_sweep(sweep("shard"), shard=(0, 2), on_run=lambda run, row: seen.append(run["lr"]))
    assert seen == [1e-2, 1e-3]
    rows = run_mqar_sweep(sweep("shard"), shard=(1, 2))
    assert {run_key(r): r["accuracy"] for r in rows} == serial


def test_shard_and_jobs_user_errors():
    from gkabench.tasks.mqar_sweep import parse_shard

    assert parse_shard("2/4") == (1, 4) and parse_shard(None) == (0, 1)
    for bad in ("0/2", "3/2", "x", "1-2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_max_minutes_starts_no_new_run(tmp_path):
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    sweep = SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=[1e-2, 3e-3], vocab_size=32, steps=3,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="m",
    )  # fmt: skip
    assert run_mqar_sweep(sweep, max_minutes=0.0) == []
    assert run_mqar_sweep(sweep, jobs=2, max_minutes=0.0) == [] and read_rows(tmp_path / "res" / "m.jsonl") == []


def test_stop_file_winds_the_sweep_down(tmp_path):
    """Once the stop file exists no run starts (a background sweep told to finish); finished rows stay."""
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    sweep = SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=[1e-2, 3e-3], vocab_size=32, steps=3,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="m",
    )  # fmt: skip
    stop = tmp_path / "stop"

    def touch_after_first(run, row):
        stop.touch()

    rows = run_mqar_sweep(sweep, on_run=touch_after_first, stop_file=stop)
    assert len(rows) == 1 and len(read_rows(tmp_path / "res" / "m.jsonl")) == 1
    assert run_mqar_sweep(sweep, jobs=2, stop_file=stop) == rows  # nothing new starts while it exists
    stop.unlink()
    assert len(run_mqar_sweep(sweep, stop_file=stop)) == 2  # gone: the sweep resumes the rest


def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A run that raises (here: diverges at an absurd lr) becomes an error row; the others run, the tables leave it
    out and list it, and a rerun tries it again. A run listed twice is trained once."""
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    sweep = SweepConfig.defaults_for(
        False, mixers=["attention"], dims=[16], lengths=[(24, 4)], lrs=[1e6, 1e-2, 1e-2], vocab_size=32, steps=4,
        batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="f",
    )  # fmt: skip
    sweep.warmup_steps = 0
    rows = run_mqar_sweep(sweep)
    assert len(rows) == 2
    failed = [r for r in rows if r.get("error")]
    assert len(failed) == 1 and failed[0]["lr"] == 1e6 and "diverged" in failed[0]["error"]
    assert "Traceback" in failed[0]["error_detail"]  # the whole message, for compiler errors that span lines
    md = (tmp_path / "res" / "f.md").read_text()
    assert "Failed runs" in md and "lr=1e+06" in md and "| attention |" in md
    seen = []
    rows = run_mqar_sweep(sweep, on_run=lambda run, row: seen.append(row is None))
    assert seen == [False, True]  # the failed run is tried again, the finished one skipped
    assert len(read_rows(tmp_path / "res" / "f.jsonl")) == 3 and len(rows) == 2


def test_out_of_memory_row_names_the_fix(monkeypatch):
    """An OOM (two runs share the GPU's memory) becomes an error row whose one line says what to rerun with."""
    import torch

    from gkabench.tasks import mqar_sweep

    def oom(run, sweep, concurrent_runs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines")

    monkeypatch.setattr(mqar_sweep, "train_mqar_run", oom)
    run = {"mixer": "gka", "dim": 256, "seq_len": 1024, "num_pairs": 256, "lr": 3e-3}
    row = mqar_sweep.train_or_error_row(run, None, concurrent_runs=2)
    assert row["accuracy"] is None and row["error"].startswith("OutOfMemoryError: CUDA out of memory.")
    assert "2 runs sharing the GPU" in row["error"] and "--jobs 1" in row["error"] and "\n" not in row["error"]


def test_mamba2_keys_at_head_dim_in_the_sweep(tmp_path):
    """--head-dim D: Mamba2's key width (its state size, default 128) is D too, as for every other mixer."""
    from gkabench.tasks.mqar_sweep import SweepConfig, run_mqar_sweep

    sweep = SweepConfig.defaults_for(
        False, mixers=["mamba2"], dims=[16], lengths=[(24, 4)], lrs=[1e-2], vocab_size=32, steps=2, batch_size=4,
        eval_examples=4, head_dim=8, out_dir=str(tmp_path / "res"), run_dir=str(tmp_path / "runs"), name="m",
    )  # fmt: skip
    (row,) = run_mqar_sweep(sweep)
    assert not row.get("error") and row["options"] == {"state_size": 8}


def test_cli_renders_the_gpu_grid_on_a_cpu_and_lists_what_is_missing(tmp_path):
    """`--grid gpu --max-minutes 0`: no run starts; the table and plot come from the rows there, and the markdown
    lists the sweep's runs that have no row yet."""
    import json

    from typer.testing import CliRunner

    from gkabench.cli import app
    from gkabench.tasks.mqar_sweep import SweepConfig

    sweep = SweepConfig.defaults_for(True, head_dim=64)
    done = sweep.runs()[0]
    row = {**done, "accuracy": 0.5, "base_mixer": done["mixer"], "options": {}, "env": {"device": "NVIDIA H200"}}
    (tmp_path / "mqar.jsonl").write_text(json.dumps(row) + "\n")
    r = CliRunner().invoke(app, ["mqar", "--grid", "gpu", "--head-dim", "64", "--max-minutes", "0", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "mqar.md").read_text()
    assert f"| {done['mixer']} | 0.500" in md and (tmp_path / "mqar.png").exists()
    # the cell's other lrs have not run: its best may still change, and the table says so
    assert f"| {done['mixer']} | 0.500 ({done['lr']:g}) † |" in md and "† not every learning rate" in md
    per_cell = len(sweep.mixers) * len(sweep.dims)  # runs of one (length, lr): every mixer at every dim
    assert f"Not run yet: {len(sweep.runs()) - 1} runs" in md and f"all {per_cell} (every mixer and dim)" in md
    assert "Environment (runs in parentheses): NVIDIA H200 (all 1)" in md and "norms / gates: eager (all 1)" in md
    # --dry-run lists what is left of the options given and writes nothing (the table stays the full grid's)
    before = md
    r = CliRunner().invoke(app, ["mqar", "--grid", "gpu", "--head-dim", "64", "--dry-run", "--lengths", "1024:256", "--lrs", "1e-2", "--out", str(tmp_path)])
    assert r.exit_code == 0 and f"{per_cell} of {per_cell} runs not yet in" in r.output, r.output
    assert f"T=1024 P=256 lr=0.01: all {per_cell}" in r.output, r.output
    assert (tmp_path / "mqar.md").read_text() == before and len((tmp_path / "mqar.jsonl").read_text().splitlines()) == 1
    r = CliRunner().invoke(app, ["mqar", "--grid", "tpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--grid" in r.output


def test_seeds_choose_the_lr_on_the_first_seed_and_average_at_it():
    """Several seeds: the lr is chosen on the first seed (the one every lr ran), the cell reports the mean and the
    range over the seeds at that lr, not the luckiest seed of any lr."""
    from gkabench.tasks.mqar_tables import best_per_cell, cell_text

    cell = dict(mixer="gka", seq_len=512, num_pairs=128, dim=256)
    rows = [
        {**cell, "lr": 1e-2, "seed": 0, "accuracy": 0.9}, {**cell, "lr": 1e-2, "seed": 1, "accuracy": 0.1},
        {**cell, "lr": 1e-2, "seed": 2, "accuracy": 0.2}, {**cell, "lr": 3e-3, "seed": 0, "accuracy": 0.5},
        {**cell, "lr": 3e-3, "seed": 1, "accuracy": 0.95},  # a lucky second seed does not pick the lr
        {**cell, "dim": 64, "lr": 3e-3, "accuracy": 0.7},  # rows without a seed field: seed 0
    ]  # fmt: skip
    best = best_per_cell(rows)
    big = best[best["dim"] == 256].iloc[0]
    assert big["lr"] == 1e-2 and big["seeds"] == 3 and big["lrs_tried"] == 2
    assert abs(big["accuracy"] - 0.4) < 1e-12 and (big["acc_min"], big["acc_max"]) == (0.1, 0.9)
    assert cell_text(next(best[best["dim"] == 256].itertuples())) == "0.400 [0.10-0.90, 3 seeds] (0.01)"
    assert cell_text(next(best[best["dim"] == 64].itertuples())) == "0.700 (0.003)"


def test_more_seeds_at_each_cells_best_lr(tmp_path):
    """`--lrs best --seeds 1,2` adds seeds only at each cell's best lr so far; cells with no row get none; each
    seed trains into its own log folder, and the table shows the mean and range."""
    from gkabench.tasks.mqar_sweep import SweepConfig, read_rows, run_mqar_sweep

    def sweep(lrs, seeds=None, dims=(16,)):
        return SweepConfig.defaults_for(
            False, mixers=["attention"], dims=list(dims), lengths=[(24, 4)], lrs=lrs, seeds=seeds, vocab_size=32,
            steps=3, batch_size=8, eval_examples=16, head_dim=8, out_dir=str(tmp_path / "res"),
            run_dir=str(tmp_path / "runs"), name="s",
        )  # fmt: skip

    first = run_mqar_sweep(sweep([1e-2, 3e-3]))
    best_lr = max(first, key=lambda r: r["accuracy"])["lr"]
    assert [(r["lr"], r["seed"]) for r in sweep(["best"], [1, 2], dims=(16, 8)).runs(first)] == [(best_lr, 1), (best_lr, 2)]
    rows = run_mqar_sweep(sweep(["best"], [1, 2], dims=(16, 8)))
    assert sorted((r["lr"], r["seed"]) for r in rows) == [(best_lr, 1), (best_lr, 2)]
    assert len(read_rows(tmp_path / "res" / "s.jsonl")) == 4
    assert {p.name for p in (tmp_path / "runs" / "s").iterdir()} >= {f"attention_d16_T24_P4_lr{best_lr:g}_s1", f"attention_d16_T24_P4_lr{best_lr:g}_s2"}
    run_mqar_sweep(sweep([1e-2, 3e-3], [0, 1, 2]), max_minutes=0)  # renders the whole grid's table, trains nothing
    md = (tmp_path / "res" / "s.md").read_text()
    assert "3 seeds]" in md and "mean [min-max] over the seeds" in md
    # the seed-0 grid rendered again: its table stays seed 0's best, the other seeds get their own section
    run_mqar_sweep(sweep([1e-2, 3e-3]), max_minutes=0)
    md = (tmp_path / "res" / "s.md").read_text()
    accs = {r["seed"]: r["accuracy"] for r in read_rows(tmp_path / "res" / "s.jsonl") if r["lr"] == best_lr}
    assert "seeds]" not in md and "## More seeds" in md
    assert f"| attention | {accs[0]:.3f} / {accs[1]:.3f} / {accs[2]:.3f} (mean " in md


def test_other_seeds_are_listed_per_seed_beside_the_one_seed_table():
    """Rows of other seeds (a later `--lrs best --seeds` sweep) show per seed at the lr the table chose on seed 0;
    a cell with only some seeds names them; a seed run at another lr (the best lr moved after it ran) is listed
    as such, not averaged in; a cell with no other seed shows '-'."""
    from gkabench.tasks.mqar_tables import seed_lines

    cell = dict(mixer="gka", seq_len=512, num_pairs=128)
    grid = [{**cell, "dim": 64, "lr": 1e-2, "seed": 0, "accuracy": 0.4}, {**cell, "dim": 64, "lr": 1e-3, "seed": 0, "accuracy": 0.1},
            {**cell, "dim": 128, "lr": 1e-3, "seed": 0, "accuracy": 0.8}, {**cell, "dim": 256, "lr": 1e-3, "seed": 0, "accuracy": 0.9}]  # fmt: skip
    seeds = [{**cell, "dim": 64, "lr": 1e-2, "seed": 2, "accuracy": 0.2}, {**cell, "dim": 64, "lr": 1e-3, "seed": 1, "accuracy": 0.7},
             {**cell, "dim": 128, "lr": 1e-3, "seed": 1, "accuracy": 0.6}, {**cell, "dim": 128, "lr": 1e-3, "seed": 2, "accuracy": 0.1}]  # fmt: skip
    md = "\n".join(seed_lines(grid, seeds))
    assert "accuracy per seed (0, 1, 2)" in md
    assert "| gka | s0 0.400 / s2 0.200 (mean 0.300, lr 0.01); at lr 0.001 seed 1: 0.700 | 0.800 / 0.600 / 0.100 (mean 0.500, lr 0.001) | - |" in md
    assert seed_lines(grid, []) == []


def test_the_mixer_width_follows_the_model_dim():
    """As in Zoology and the paper, a wider model has a wider mixer (a larger state): dim / head_dim heads. A fixed
    --num-heads keeps every dim's mixer the same (sessions 3-9's grid did that by accident: mqar_fixed_heads)."""
    from gkabench.models import preset_config
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config

    sweep = SweepConfig.defaults_for(True, mixers=["gka", "mamba2"], device="cpu")
    assert {(r["dim"], r["num_heads"], r["head_dim"]) for r in sweep.runs()} == {(64, 1, 64), (128, 2, 64), (256, 4, 64)}
    states = {}
    for run in sweep.runs():
        cfg, base, opts = mqar_train_config(run, sweep)
        states[(run["mixer"], run["dim"])] = preset_config("tiny", mixer=base, hidden_size=run["dim"], num_heads=cfg.num_heads, head_dim=cfg.head_dim)
    assert {(k, c.num_heads) for k, c in states.items() if k[0] == "gka"} == {(("gka", 64), 1), (("gka", 128), 2), (("gka", 256), 4)}
    fixed = SweepConfig.defaults_for(True, num_heads=2)
    assert {r["num_heads"] for r in fixed.runs()} == {2}
    with pytest.raises(ValueError, match="not a multiple of --head-dim 64"):
        SweepConfig.defaults_for(True, dims=[96]).validate()


def test_cuda_graph_is_chosen_per_mixer_and_not_part_of_a_runs_identity():
    """--cuda-graph gka,attention: those mixers' runs train with cuda_graph, the others eagerly; the runs (and so
    which rows count as done) are the same with or without it; unknown names are a one-line error."""
    from gkabench.tasks.mqar_sweep import SweepConfig, mqar_train_config

    plain = SweepConfig.defaults_for(True, mixers=["gka", "gka_plain", "attention"], dims=[64], device="cpu")
    graphed = SweepConfig.defaults_for(True, mixers=["gka", "gka_plain", "attention"], dims=[64], device="cpu", cuda_graph_mixers=["gka_plain", "attention"])
    graphed.validate()
    assert plain.runs() == graphed.runs()
    chosen = {run["mixer"]: mqar_train_config(run, graphed)[0].cuda_graph for run in graphed.runs()}
    assert chosen == {"gka": False, "gka_plain": True, "attention": True}
    assert not any(mqar_train_config(run, plain)[0].cuda_graph for run in plain.runs())
    every = SweepConfig.defaults_for(True, mixers=["gka"], dims=[64], device="cpu", cuda_graph_mixers=["all"])
    assert all(mqar_train_config(run, every)[0].cuda_graph for run in every.runs())
    with pytest.raises(ValueError, match="--cuda-graph: unknown mixer 'gkaa'"):
        SweepConfig.defaults_for(True, cuda_graph_mixers=["gkaa"]).validate()


def test_plot_legend_names_every_mixer_when_a_panel_lacks_some(tmp_path, monkeypatch):
    """One legend for the figure: a length that has run for some mixers only must not hide the others' names."""
    from gkabench.tasks import mqar_tables

    saved = {}
    monkeypatch.setattr(mqar_tables, "save_figure_atomic", lambda fig, path, dpi: saved.setdefault("fig", fig))
    cell = dict(num_pairs=4, lr=1e-3, seed=0)
    rows = [dict(mixer="gka", seq_len=32, dim=16, accuracy=0.9, **cell), dict(mixer="attention", seq_len=32, dim=16, accuracy=0.5, **cell),
            dict(mixer="gka", seq_len=64, dim=16, accuracy=0.4, **cell)]  # fmt: skip
    mqar_tables.write_plot(rows, tmp_path / "p.png", "t")
    fig = saved["fig"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["attention", "gka"]
    assert all(ax.get_legend() is None for ax in fig.axes)
