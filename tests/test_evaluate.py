"""``gkabench eval`` on CPU: chunked prefill and left-padded batches give the same answers as one-shot
generation; end to end on tiny random-init models (plumbing only: they score ~0) and on the oracle / closed-book
readers; resume, Ctrl-C, out-of-memory and other user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gkabench import evaluate
from gkabench.cli import app
from gkabench.evaluate import generate, load_model, resolve_model_dir
from gkabench.io import read_jsonl
from gkabench.tokenizers import byte_tokenizer

runner = CliRunner()
DATA = Path(__file__).parent / "data" / "longctx"


def _save_tiny(path, mixer: str):
    from gkabench.models import GKABenchForCausalLM, preset_config

    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = preset_config(
        "tiny",
        mixer=mixer,
        vocab_size=259,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GKABenchForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _save_tiny_llama(path):
    """A plain transformers model (not gkabench): generation goes through its own KV cache and position ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {m: _save_tiny(root / m, m) for m in ("gka", "gated_deltanet", "gla", "mamba2", "attention")}
    out["llama"] = _save_tiny_llama(root / "llama")
    return out


@pytest.mark.parametrize("mixer", ["gka", "gated_deltanet", "gla", "mamba2", "attention", "llama"])
def test_chunked_batched_generation_matches_one_shot(models, mixer):
    model, tok = load_model(models[mixer], torch.device("cpu"))
    prompts = [
        tok("Question: who founded Rira Guild?\nAnswer:" * 9)["input_ids"],
        tok("Document 1:\nshort one. Answer:")["input_ids"],
    ]
    singles = []
    for p in prompts:
        sc: list = []
        text = generate(model, tok, [p], 6, chunk_size=10_000, scores=sc)[0]
        singles.append((text, torch.cat(sc)))
    sc = []
    texts = generate(model, tok, prompts, 6, chunk_size=64, scores=sc)  # left-padded batch, 64-token chunks
    assert generate(model, tok, prompts, 6, chunk_size=0) == texts  # one prefill call
    batched = torch.stack(sc, dim=1)  # [B, steps, V]
    assert texts == [t for t, _ in singles]
    for i, (_, ref) in enumerate(singles):  # same next-token logits at every step, not only the same argmax
        torch.testing.assert_close(batched[i], ref, rtol=1e-4, atol=1e-4)


def test_resolve_model_dir(models, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "config.json").write_text("{}")
    assert resolve_model_dir(str(run)) == run / "checkpoint"
    assert evaluate.model_name(str(run / "checkpoint")) == "run"
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_model_dir(str(tmp_path / "missing"))


def _eval(args, out, cache):
    return runner.invoke(app, ["eval", *args, "--out", str(out), "--cache-dir", str(cache)])


def test_eval_end_to_end_and_resume(models, tmp_path, monkeypatch):
    out, cache = tmp_path / "res", tmp_path / "cache"
    args = ["--task", "rag.nq,longqa.squad,niah.niah_single", "--model", str(models["gka"]), "--lengths", "3k",
            "--n", "3", "--batch-size", "2", "--max-new-tokens", "8", "--chunk-size", "1024", "--device", "cpu"]  # fmt: skip
    res = _eval(args, out, cache)
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "gka.jsonl")
    assert len(rows) == 9
    r = rows[0]
    for key in (
        "task",
        "flavour",
        "length",
        "depth",
        "prediction",
        "gold",
        "score",
        "input_tokens",
        "time_s",
        "peak_mem_gib",
        "env",
    ):
        assert key in r
    assert r["mixers"] == ["gka"] and r["env"]["torch"] and 0.9 * 3072 <= r["input_tokens"] <= 3072
    assert {x["depth"] for x in rows} == {0.0, 0.25, 0.5}
    md = (out / "gka.md").read_text()
    assert "| rag" in md and "3k" in md and (out / "gka.csv").exists()

    # Resume: nothing left to do, so the model is never asked again.
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: pytest.fail("resumed run generated again"))
    res = _eval(args, out, cache)
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(out / "gka.jsonl")) == 9


def test_eval_interrupt_keeps_rows_and_resumes(models, tmp_path, monkeypatch):
    out, cache = tmp_path / "res", tmp_path / "cache"
    args = [
        "--task",
        "niah.niah_single",
        "--model",
        str(models["attention"]),
        "--lengths",
        "1k",
        "--n",
        "4",
        "--max-new-tokens",
        "4",
    ]
    real, calls = evaluate.generate, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "generate", flaky)
    res = _eval(args, out, cache)
    assert res.exit_code == 130 and "interrupted" in res.output
    assert len(read_jsonl(out / "attention.jsonl")) == 2 and (out / "attention.md").exists()
    res = _eval(args, out, cache)
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "attention.jsonl")
    assert len(rows) == 4 and sorted(r["index"] for r in rows) == [0, 1, 2, 3]


def test_eval_reference_readers(tmp_path):
    out, cache = tmp_path / "res", tmp_path / "cache"
    res = _eval(["--task", "rag,longqa,niah", "--model", "oracle", "--lengths", "3k", "--n", "5"], out, cache)
    assert res.exit_code == 0, res.output
    assert all(r["score"] == 1.0 for r in read_jsonl(out / "oracle.jsonl"))
    res = _eval(["--task", "rag,longqa,niah", "--model", "closed-book", "--lengths", "3k", "--n", "5"], out, cache)
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "closed-book.jsonl")
    assert sum(r["score"] for r in rows) / len(rows) <= 0.1
    res = _eval(
        ["--task", "rag.nq,longqa", "--model", "oracle", "--lengths", "2k", "--n", "3", "--data", str(DATA)], out, cache
    )
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "oracle@longctx.jsonl")  # real-data rows in a file of their own
    assert len(rows) == 9 and all(r["score"] == 1.0 and r["source"] != "facts" for r in rows)


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and all(n in lines[-1] for n in needles), res.output


def test_eval_user_errors(models, tmp_path, monkeypatch):
    out, cache = tmp_path / "res", tmp_path / "cache"
    _one_line_error(_eval(["--model", str(tmp_path / "nope"), "--lengths", "1k"], out, cache), "no such directory")
    _one_line_error(_eval(["--task", "rag.squad", "--model", "oracle", "--lengths", "4k"], out, cache), "no flavour")
    _one_line_error(
        _eval(["--task", "rag.nq", "--model", "oracle", "--lengths", "1k"], out, cache), "pass longer --lengths"
    )
    _one_line_error(
        _eval(["--task", "rag.popqa", "--model", "oracle", "--lengths", "4k", "--data", str(DATA)], out, cache),
        "no HELMET file",
    )

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(evaluate, "generate", oom)
    args = [
        "--task",
        "niah.niah_single",
        "--model",
        str(models["attention"]),
        "--lengths",
        "1k",
        "--n",
        "2",
        "--batch-size",
        "2",
    ]
    _one_line_error(_eval(args, out, cache), "out of memory", "--chunk-size")


def test_eval_lm_eval_bridge_missing_is_one_line(models, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gkabench.lm_eval_bridge", None)  # as if the bridge were not there
    res = _eval(
        ["--task", "lm-eval:arc_easy", "--model", str(models["attention"])], tmp_path / "res", tmp_path / "cache"
    )
    _one_line_error(res, "lm_eval_bridge")


def test_eval_lm_eval_calls_bridge(models, tmp_path, monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("gkabench.lm_eval_bridge")

    def run_lm_eval(model_dir, tasks, data_dir, limit, batch_size, device):
        seen.update(model_dir=model_dir, tasks=tasks, limit=limit)
        return {"results": {t: {"acc,none": 0.5} for t in tasks}}

    fake.run_lm_eval = run_lm_eval
    monkeypatch.setitem(sys.modules, "gkabench.lm_eval_bridge", fake)
    out = tmp_path / "res"
    res = _eval(
        ["--task", "lm-eval:arc_easy,piqa", "--model", str(models["attention"]), "--limit", "3"],
        out,
        tmp_path / "cache",
    )
    assert res.exit_code == 0, res.output
    assert seen["tasks"] == ["arc_easy", "piqa"] and seen["limit"] == 3
    assert json.loads((out / "attention.lm_eval.json").read_text())["results"]["piqa"]["acc,none"] == 0.5


def test_longctx_task_runs_in_lm_eval(models, tmp_path, monkeypatch):
    """tests/data/longctx_lm_eval holds a YAML exposing niah_single to lm-eval (custom_dataset, per-length metrics)."""
    bridge = pytest.importorskip("gkabench.lm_eval_bridge")
    monkeypatch.setenv("GKABENCH_CACHE", str(tmp_path / "cache"))  # the rows' cache, not the user's
    res = bridge.run_lm_eval(str(models["attention"]), ["gkabench_niah_single"], None, None, 1, "cpu",
                             include_path=str(Path(__file__).parent / "data" / "longctx_lm_eval"), results_dir=str(tmp_path), write=False)  # fmt: skip
    got = res["gkabench_niah_single"]
    assert got["n"] == 4 and 0.0 <= got["1024"] <= 1.0 and 0.0 <= got["2048"] <= 1.0


def test_resume_needs_same_checkpoint_generator_and_tokenizer(models, tmp_path, monkeypatch):
    """Rows are reused only when written by this checkpoint (fingerprint), task generator and tokenizer; a
    retrained checkpoint or a generator bump evaluates them again, saying so in one line."""
    import shutil

    from gkabench.tasks import facts

    ck = shutil.copytree(models["attention"], tmp_path / "ck")
    out, cache = tmp_path / "res", tmp_path / "cache"
    args = ["--task", "niah.niah_single", "--model", str(ck), "--lengths", "1k", "--n", "2", "--max-new-tokens", "2",
            "--device", "cpu"]  # fmt: skip
    assert _eval(args, out, cache).exit_code == 0
    rows = read_jsonl(out / "ck.jsonl")
    assert len(rows) == 2 and rows[0]["model_fingerprint"] == evaluate.model_fingerprint(ck)
    real, calls = evaluate.generate, []
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = _eval(args, out, cache)  # same everything: resumed, nothing generated
    assert res.exit_code == 0 and not calls and "not reused" not in res.output
    # "retrained": other weights under the same directory
    from gkabench.models import GKABenchForCausalLM

    m = GKABenchForCausalLM.from_pretrained(ck)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    m.save_pretrained(ck)
    assert evaluate.model_fingerprint(ck) != rows[0]["model_fingerprint"]
    res = _eval(args, out, cache)
    assert res.exit_code == 0, res.output
    assert len(calls) == 2 and "2 rows came from another checkpoint" in " ".join(res.output.split())
    assert len(read_jsonl(out / "ck.jsonl")) == 4
    summary = evaluate.summarize(read_jsonl(out / "ck.jsonl"))  # the old checkpoint's rows are left out
    assert set(summary.n) == {2}
    calls.clear()
    monkeypatch.setattr(facts, "GENERATOR_VERSION", "bumped")
    res = _eval(args, out, cache)
    assert res.exit_code == 0, res.output
    assert len(calls) == 2 and read_jsonl(out / "ck.jsonl")[-1]["generator_version"] == "bumped"
    calls.clear()
    assert _eval(args, out, cache).exit_code == 0 and not calls
    assert evaluate.model_fingerprint(None, "oracle") == "reader:oracle"


def test_oom_retry_after_the_failed_batch_is_freed(monkeypatch):
    """The one-row retry runs after leaving the except block, so the failed batch's tensors are already freed."""
    import gc
    import weakref

    refs, alive = [], []

    def fake_generate(model, tok, prompts, new_tokens, chunk):
        big = torch.empty(1000)  # stands for the failed batch's activations / cache
        refs.append(weakref.ref(big))
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        gc.collect()
        alive.append(refs[0]() is not None)
        return ["x"]

    monkeypatch.setattr(evaluate, "generate", fake_generate)

    class Cfg:
        chunk_size = 8

    def tok(s, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}

    row = {"prompt": "p", "task": "niah", "flavour": "niah_single", "length": 1, "depth": 0, "index": 0, "seed": 0,
           "answers": ["x"], "input_tokens": 3}  # fmt: skip
    recs = evaluate._answer([row, dict(row, index=1)], None, tok, None, 4, Cfg, 1, torch.device("cpu"))
    assert len(recs) == 2 and alive == [False, False]


def test_eval_rejects_empty_runs(tmp_path):
    out, cache = tmp_path / "res", tmp_path / "cache"
    base = ["--task", "niah.niah_single", "--model", "oracle", "--lengths", "1k"]
    _one_line_error(_eval([*base, "--n", "0"], out, cache), "--n 0", "at least 1")
    _one_line_error(_eval([*base, "--max-new-tokens", "0"], out, cache), "--max-new-tokens 0", "at least 1")
    assert not out.exists()
    with pytest.raises(ValueError, match="--n 0"):
        evaluate.run_eval(evaluate.EvalConfig(model="oracle", tasks="niah", lengths=[1024], n=0, out=str(out)))


def test_eval_mixed_tasks_pass_data_to_both(models, tmp_path, monkeypatch):
    """``--task rag.nq,lm-eval:arc_easy --data DIR``: the lm-eval tasks and ours both get --data."""
    import sys
    import types

    seen = {}
    fake = types.ModuleType("gkabench.lm_eval_bridge")

    def run_lm_eval(model_dir, tasks, data_dir, limit, batch_size, device):
        seen["lm_eval"] = data_dir
        return {"results": {}}

    fake.run_lm_eval = run_lm_eval
    monkeypatch.setitem(sys.modules, "gkabench.lm_eval_bridge", fake)
    monkeypatch.setattr(evaluate, "run_eval", lambda cfg, console=None: seen.setdefault("ours", cfg.data) and evaluate.EvalResult([], []))
    res = _eval(["--task", "rag.nq,lm-eval:arc_easy", "--model", str(models["attention"]), "--data", str(DATA)],
                tmp_path / "res", tmp_path / "cache")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen == {"lm_eval": str(DATA), "ours": str(DATA)}


def test_warm_up_runs_once_per_model_over_two_prefill_chunks(monkeypatch):
    """On CUDA the first timed generation of a model is preceded by one untimed one (Triton compiles then, not
    inside the seconds per example): a prompt of two full prefill chunks and a ragged one, a few decode steps."""
    from gkabench import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "generate", lambda model, tok, prompts, n, chunk: calls.append((len(prompts[0]), n, chunk)))

    class Model(torch.nn.Module):
        pass

    m1, m2 = Model(), Model()
    evaluate._warm_up(m1, None, list(range(5000)), 8192)
    evaluate._warm_up(m1, None, list(range(5000)), 8192)
    evaluate._warm_up(m2, None, list(range(100)), 0)
    assert calls == [(2 * 1024 + 17, 3, 1024), (100, 3, 0)]
