"""gkabench report on synthetic results in the writers' formats: tables (md/csv/png), the paper's category
averages, absolute / relative differences against a baseline, tolerance to missing folders and bad lines,
and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gkabench.report import PAPER_SHORT_TASKS, make_report, parse_length, relative_diff

ENV = {"device": "NVIDIA H200", "device_type": "cuda", "torch": "2.11.0", "git_sha": "abc", "command": "gkabench x"}
RAG = ["nq", "triviaqa", "popqa", "hotpotqa"]
# model -> (mixer, per-flavour SubEM fraction); gka is exactly +10% relative over gated_deltanet on RAG
MODELS = {"gka_s": ("gka", 0.33), "gdn_s": ("gated_deltanet", 0.30), "attn_s": ("attention", 0.50)}


def _jsonl(path: Path, rows: list[dict], extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)


def _eval_rows(model: str, mixer: str, p: float) -> list[dict]:
    """Per-example rows as ``gkabench eval`` appends them (one per task/flavour/length/example)."""
    rows = []
    for task, flavours, lengths in (("rag", RAG, [8192, 16384]), ("longqa", ["squad", "hotpotqa"], [4096])):
        for f in flavours:
            for L in lengths:
                n_right = round(p * 100)
                for i in range(100):
                    rows.append({"task": task, "flavour": f, "length": L, "depth": (i % 5) / 4, "index": i, "seed": 0,
                                 "source": "generated", "prediction": "x", "gold": ["y"], "score": float(i < n_right),
                                 "input_tokens": L - 10, "time_s": 0.1, "model": model, "mixers": [mixer], "env": ENV})  # fmt: skip
    return rows


def _lm_eval_rows(model: str, mixer: str, p: float) -> list[dict]:
    """lm-eval rows as the bridge writes them (its own row builder on an lm-eval results dict)."""
    from gkabench.lm_eval_bridge import result_rows

    results = {"results": {}, "n-samples": {}, "n-shot": {}}
    for task, metric in PAPER_SHORT_TASKS.items():
        m = {"alias": task, f"{metric},none": p, f"{metric}_stderr,none": 0.01}
        if metric == "acc_norm":
            m.update({"acc,none": p - 0.1, "acc_stderr,none": 0.01})  # the paper reads acc_norm, not acc
        results["results"][task] = m
        results["n-samples"][task] = {"original": 100, "effective": 100}
        results["n-shot"][task] = 0
    return result_rows(results, model=model, mixer=mixer, model_dir=f"runs/{model}/checkpoint", limit=None, env=ENV)


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    for model, (mixer, p) in MODELS.items():
        _jsonl(
            root / "eval" / f"{model}.jsonl",
            _eval_rows(model, mixer, p) + _lm_eval_rows(model, mixer, p + 0.2),
            extra='{"cut li',
        )
    speed = []
    for mixer, tps in (("gka", 5.9e6), ("gated_deltanet", 17.8e6)):
        for T in (2048, 8192):
            speed.append({"preset": "matched", "dtype": "bf16", "level": "op", "mode": "fwd", "mixer": mixer, "T": T, "decode_batch": None,
                          "batch": 32768 // T, "tokens": 32768, "status": "ok", "median_ms": 32768 / tps * 1e3, "tokens_per_s": tps,
                          "time_utc": "2026-11-28T12:00:00+00:00", "env": ENV})  # fmt: skip
        speed.append({"preset": "matched", "dtype": "bf16", "level": "op", "mode": "decode", "mixer": mixer, "T": 2048, "decode_batch": 64,
                      "status": "ok", "us_per_step": 333.0, "env": ENV})  # fmt: skip
    speed.append(
        {
            "preset": "matched",
            "dtype": "bf16",
            "level": "op",
            "mode": "fwd",
            "mixer": "gka",
            "T": 32768,
            "status": "oom: CUDA out of memory",
            "env": ENV,
        }
    )
    _jsonl(root / "speed" / "2026-11-28-nvidia-h200-matched.jsonl", speed)
    mqar = [{"mixer": m, "dim": 64, "seq_len": 256, "num_pairs": 64, "lr": lr, "vocab_size": 8192, "accuracy": acc, "env": ENV}
            for m, accs in (("gka", (0.5, 0.9)), ("attention", (0.99, 0.2))) for lr, acc in zip((1e-3, 1e-2), accs)]  # fmt: skip
    _jsonl(root / "mqar" / "mqar.jsonl", mqar)
    return root


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_tables_and_relative_differences(results, tmp_path):
    out = tmp_path / "report"
    res = make_report(results, out, baseline="gated_deltanet")  # a mixer name -> its one model
    assert res.baseline == "gdn_s"
    for name in ("report.md", "eval.csv", "eval_cost.csv", "rag.png", "longqa.png", "speed.csv", "mqar.csv"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    rows = _csv(out / "eval.csv")
    rag = {(r["model"], r["length"]): r for r in rows if r["category"] == "rag" and r["flavour"] == "avg"}
    g = rag[("gka_s", "8192")]
    assert float(g["value"]) == pytest.approx(33.0) and float(g["baseline_value"]) == pytest.approx(30.0)
    assert float(g["abs_diff"]) == pytest.approx(3.0) and float(g["rel_diff_pct"]) == pytest.approx(10.0)
    assert g["complete"] == "True" and g["parts"] == "4"
    assert float(rag[("gdn_s", "16384")]["rel_diff_pct"]) == pytest.approx(0.0)
    short = {r["model"]: r for r in rows if r["category"] == "short" and r["flavour"] == "avg"}
    assert float(short["gka_s"]["value"]) == pytest.approx(53.0)  # acc_norm / acc / contains as the paper reads them
    assert short["gka_s"]["complete"] == "True" and short["gka_s"]["parts"] == "10"
    arc = next(r for r in rows if r["model"] == "gka_s" and r["task"] == "arc_easy")
    assert arc["metric"] == "acc_norm" and float(arc["value"]) == pytest.approx(53.0)
    md = (out / "report.md").read_text()
    assert "| gka_s (gka) | +3.00 (+10.0%) |" in md  # summary diff table, first column RAG 8k
    assert "RAG 8k" in md and "LongQA 4k" in md and "short-context avg" in md
    assert "5.9M" in md and "17.8M" in md and "192k" in md  # speed: fwd tokens/s and decode 64 / 333 us
    assert "0.900 (0.01)" in md and "0.990 (0.001)" in md  # MQAR: best over lrs
    assert [r["mixer"] for r in _csv(out / "speed.csv")].count("gka") == 3  # the OOM cell is not a speed
    cost = {(r["model"], r["length"]): r for r in _csv(out / "eval_cost.csv")}
    assert (
        float(cost[("gka_s", "8192")]["time_s_mean"]) == pytest.approx(0.1)
        and cost[("gka_s", "8192")]["examples"] == "400"
    )
    assert "Long-context cost per length" in md


def test_relative_diff_math():
    assert relative_diff(33.0, 30.0) == pytest.approx(10.0)
    assert relative_diff(27.0, 30.0) == pytest.approx(-10.0)
    assert relative_diff(5.0, 0.0) is None and relative_diff(None, 3.0) is None
    assert parse_length("128k") == 131072 and parse_length(4096) == 4096 and parse_length("x") is None


def test_missing_baseline_is_one_line(results, tmp_path):
    with pytest.raises(ValueError) as e:
        make_report(results, tmp_path / "r", baseline="mamba2")
    assert (
        "\n" not in str(e.value)
        and "mamba2" in str(e.value)
        and "--baseline" in str(e.value)
        and "gdn_s" in str(e.value)
    )
    from gkabench.cli import app

    r = CliRunner().invoke(
        app, ["report", "--results", str(results), "--out", str(tmp_path / "r"), "--baseline", "mamba2"]
    )
    assert r.exit_code == 2 and len([ln for ln in r.output.splitlines() if ln.strip()]) == 1
    # without --baseline: gated_deltanet when present, else no differences (and no error)
    for f in (results / "eval").glob("gdn_s.jsonl"):
        f.unlink()
    res = make_report(results, tmp_path / "r2")
    assert res.baseline is None and "No baseline" in (tmp_path / "r2" / "report.md").read_text()


def test_cli_report_default_paths(results):
    from gkabench.cli import app

    r = CliRunner().invoke(app, ["report", "--results", str(results)])
    assert r.exit_code == 0, r.output
    assert (results / "report" / "report.md").exists() and "gka_s" in r.output


def test_tolerant_of_missing_folders_and_fields(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    res = make_report(root)
    assert "No results found" in (root / "report" / "report.md").read_text() and res.tables == []
    # aggregate rows without index, odd task spellings and string lengths; a rerun replaces the older value
    _jsonl(root / "eval" / "m.jsonl", [
        {"model": "m", "task": "rag/nq", "length": "8k", "value": 0.2},
        {"model": "m", "task": "rag_popqa", "length": 8192, "score": 0.4},
        {"model": "m", "task": "rag", "flavour": "nq", "length": 8192, "value": 0.3},
        {"task": "arc_easy", "metric": "acc_norm", "value": 0.6},
        {"task": "piqa", "metric": "acc_norm", "value": "n/a"},
        {"no_task": 1},
    ])  # fmt: skip
    res = make_report(root)
    rows = _csv(root / "report" / "eval.csv")
    avg = next(r for r in rows if r["category"] == "rag" and r["flavour"] == "avg")
    assert float(avg["value"]) == pytest.approx(35.0) and avg["complete"] == "False" and avg["parts"] == "2"
    assert any(r["model"] == "m" and r["task"] == "arc_easy" for r in rows)  # model from the file name
    assert "35.00*" in (root / "report" / "report.md").read_text()
    assert not (root / "report" / "speed.csv").exists()


def test_default_baseline_with_several_gated_deltanet_models(results, tmp_path):
    """``gdn_s`` and ``gdn_s@helmet`` both have the mixer gated_deltanet: without --baseline the report picks the
    generated-data one (no '@') with a note instead of exiting; with two plain ones it has no baseline."""
    from gkabench.cli import app

    rows = [dict(r, model="gdn_s@helmet") for r in _eval_rows("gdn_s@helmet", "gated_deltanet", 0.25)]
    _jsonl(results / "eval" / "gdn_s@helmet.jsonl", rows)
    res = make_report(results, tmp_path / "r")
    assert res.baseline == "gdn_s" and any("Several models have the mixer" in n for n in res.notes)
    r = CliRunner().invoke(app, ["report", "--results", str(results), "--out", str(tmp_path / "r1")])
    assert r.exit_code == 0, r.output
    _jsonl(results / "eval" / "gdn2.jsonl", [dict(x, model="gdn2") for x in _eval_rows("gdn2", "gated_deltanet", 0.2)])
    res = make_report(results, tmp_path / "r2")
    assert res.baseline is None and "no baseline" in (tmp_path / "r2" / "report.md").read_text()
    with pytest.raises(ValueError, match="several models"):  # asked for explicitly: still ambiguous
        make_report(results, tmp_path / "r3", baseline="gated_deltanet")


def test_no_differences_across_data_sources(results, tmp_path):
    """A model's real-data rows (``name@folder``) are never compared with generated-data rows, either way."""
    _jsonl(results / "eval" / "gka_s@helmet.jsonl", _eval_rows("gka_s@helmet", "gka", 0.6))
    _jsonl(results / "eval" / "gdn_s@helmet.jsonl", _eval_rows("gdn_s@helmet", "gated_deltanet", 0.5))
    res = make_report(results, tmp_path / "r", baseline="gdn_s")
    rows = _csv(tmp_path / "r" / "eval.csv")
    real = [r for r in rows if r["model"] == "gka_s@helmet"]
    assert real and all(r["baseline_value"] == "" and r["rel_diff_pct"] == "" for r in real)
    gen = next(r for r in rows if r["model"] == "gka_s" and r["category"] == "rag" and r["flavour"] == "avg")
    assert gen["baseline_value"] != ""
    assert any("gka_s@helmet" in n and "other data" in n for n in res.notes)
    md = (tmp_path / "r" / "report.md").read_text()
    diffs = md.split("### Differences against gdn_s")[1].split("##")[0]
    assert "gka_s@helmet" not in diffs and "gka_s" in diffs
    make_report(results, tmp_path / "r2", baseline="gdn_s@helmet")  # real-data baseline: real-data models only
    rows = _csv(tmp_path / "r2" / "eval.csv")
    assert all(r["baseline_value"] == "" for r in rows if r["model"] == "gka_s")
    real = next(r for r in rows if r["model"] == "gka_s@helmet" and r["category"] == "rag" and r["flavour"] == "avg")
    assert float(real["rel_diff_pct"]) == pytest.approx(20.0)


def test_mqar_best_lr_per_training_setting(tmp_path):
    """Rows of one sweep file with other steps / vocab / batch (a rerun with other settings) are kept apart, as
    the sweep's own markdown keeps them: the best lr is taken within one setting only."""
    root = tmp_path / "results"
    base = {"mixer": "gka", "dim": 64, "seq_len": 256, "num_pairs": 64, "vocab_size": 8192, "batch_size": 64, "env": ENV}
    _jsonl(root / "mqar" / "mqar.jsonl", [
        dict(base, steps=3000, lr=1e-3, accuracy=0.4), dict(base, steps=3000, lr=1e-2, accuracy=0.5),
        dict(base, steps=20000, lr=1e-3, accuracy=0.95),
        dict(base, steps=3000, lr=1e-3, accuracy=0.9, vocab_size=64),
    ])  # fmt: skip
    make_report(root)
    rows = _csv(root / "report" / "mqar.csv")
    got = {(r["steps"], r["vocab_size"]): (float(r["accuracy"]), float(r["lr"])) for r in rows}
    assert got == {("3000", "8192"): (0.5, 1e-2), ("20000", "8192"): (0.95, 1e-3), ("3000", "64"): (0.9, 1e-3)}
    md = (root / "report" / "report.md").read_text()
    assert md.count("### MQAR best accuracy") == 3 and "steps 20000" in md
    assert "steps 3000, batch 64; lrs run: 0.001, 0.01;" in md  # each table says which lrs it chose among


def test_mqar_seeds_are_averaged_at_the_lr_of_the_first_seed(tmp_path):
    """More seeds of one setting share its table (seed is not a setting): the lr is chosen on seed 0 and the cell is
    the mean over the seeds at it, as in the sweep's own table."""
    root = tmp_path / "results"
    base = {"mixer": "gka", "dim": 64, "seq_len": 256, "num_pairs": 64, "vocab_size": 8192, "batch_size": 64, "steps": 3000, "env": ENV}
    _jsonl(root / "mqar" / "mqar.jsonl", [
        dict(base, lr=1e-2, seed=0, accuracy=0.8), dict(base, lr=1e-2, seed=1, accuracy=0.2),
        dict(base, lr=1e-3, seed=0, accuracy=0.6), dict(base, lr=1e-3, seed=1, accuracy=0.99),
    ])  # fmt: skip
    make_report(root)
    rows = _csv(root / "report" / "mqar.csv")
    assert [(float(r["accuracy"]), float(r["lr"]), r["seeds"]) for r in rows] == [(0.5, 1e-2, "2")]
    md = (root / "report" / "report.md").read_text()
    assert md.count("### MQAR best accuracy") == 1 and "0.500 (0.01), mean of 2 seeds" in md


def test_stale_rows_of_a_retrained_checkpoint_drop_out(tmp_path):
    """Per-example rows of one model from an older checkpoint (another model_fingerprint) or generator are not
    averaged with the latest ones."""
    root = tmp_path / "results"
    old = [dict(r, model_fingerprint="old", generator_version="1") for r in _eval_rows("m", "gka", 0.9)]
    new = [dict(r, model_fingerprint="new", generator_version="1") for r in _eval_rows("m", "gka", 0.2)]
    _jsonl(root / "eval" / "m.jsonl", old + new[: len(new) // 2])  # the new run did only part of the cells
    make_report(root)
    rows = _csv(root / "report" / "eval.csv")
    vals = {float(r["value"]) for r in rows if r["category"] == "rag" and r["flavour"] != "avg"}
    assert vals == {20.0}
