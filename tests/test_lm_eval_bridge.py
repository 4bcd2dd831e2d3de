"""lm-eval on gkabench checkpoints, offline: the gkabench LM and lm-eval's hf LM on a tiny random-init checkpoint
and tiny local tasks (tests/data/lm_eval_tasks), rows written, padding-invariant scores and generations, one-line
errors for missing data and unknown tasks, and a cheap ``import gkabench`` that still registers everything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from gkabench import lm_eval_bridge as B

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "data" / "lm_eval_tasks"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random-init GKA LM with the byte tokenizer, saved as train saves it: RUN/checkpoint."""
    from gkabench.models import GKABenchForCausalLM, preset_config
    from gkabench.tokenizers import byte_tokenizer

    torch.manual_seed(0)
    cfg = preset_config("tiny", mixer="gka", vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    d = tmp_path_factory.mktemp("run") / "tiny_gka" / "checkpoint"
    GKABenchForCausalLM(cfg).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def test_run_lm_eval_writes_rows(ckpt, tmp_path):
    out = B.run_lm_eval(str(ckpt), ["lm-eval:gkabench_tiny_arc", "gkabench_tiny_fda"], batch_size=3, device="cpu",
                        results_dir=tmp_path, include_path=str(TASKS))  # fmt: skip
    assert set(out) == {"gkabench_tiny_arc", "gkabench_tiny_fda"}
    arc = out["gkabench_tiny_arc"]
    assert (
        arc["n"] == 6 and 0.0 <= arc["acc"] <= 1.0 and 0.0 <= arc["acc_norm"] <= 1.0 and arc["acc_stderr"] is not None
    )
    assert out["gkabench_tiny_fda"]["n"] == 4 and 0.0 <= out["gkabench_tiny_fda"]["contains"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "tiny_gka.jsonl").read_text().splitlines()]
    assert {(r["task"], r["metric"]) for r in rows} == {
        ("gkabench_tiny_arc", "acc"),
        ("gkabench_tiny_arc", "acc_norm"),
        ("gkabench_tiny_fda", "contains"),
    }
    for r in rows:
        assert r["model"] == "tiny_gka" and r["mixer"] == "gka" and r["source"] == "lm-eval"
        assert {"value", "stderr", "n", "num_fewshot"} <= set(r) and r["env"]["torch"] == torch.__version__
    # few-shot from the train split goes through too
    out1 = B.run_lm_eval(str(ckpt), ["gkabench_tiny_arc"], num_fewshot=1, limit=2, device="cpu", results_dir=tmp_path,
                         include_path=str(TASKS), write=False)  # fmt: skip
    assert out1["gkabench_tiny_arc"]["n"] == 2


class _Req:
    def __init__(self, *args):
        self.args = args


def test_gkabench_lm_padding_invariant(ckpt):
    """Scores and greedy generations do not depend on batch size (right padding for scoring, left padding +
    attention mask through the recurrent cache for generation)."""
    lm = B.GKABenchLM(pretrained=str(ckpt), device="cpu", batch_size=1)
    texts = [
        ("Question: where?\nAnswer:", " in the sea"),
        ("Q: a\nA:", " b"),
        ("The lamps of Selwyn burn", " oil and more oil"),
    ]
    reqs = [(None, lm.tok_encode(c), lm.tok_encode(t)) for c, t in texts]
    one = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    lm.batch_size = 3
    three = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g for _, g in one] == [g for _, g in three]
    assert torch.allclose(torch.tensor([s for s, _ in one]), torch.tensor([s for s, _ in three]), atol=1e-4, rtol=1e-5)
    # the sum of log-probs is what the model gives token by token
    ctx, cont = reqs[1][1], reqs[1][2]
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ctx + cont[:-1]])).logits.float(), -1)[0]
    direct = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    assert abs(direct - one[1][0]) < 1e-4
    gen = [_Req(c, {"until": ["\n"], "max_gen_toks": 6}) for c, _ in texts]
    lm.batch_size = 1
    g1 = lm.generate_until(gen, disable_tqdm=True)
    lm.batch_size = 3
    g3 = lm.generate_until(gen, disable_tqdm=True)
    assert g1 == g3 and all("\n" not in g for g in g1)
    lm.prefill_chunk = 5  # prompts prefilled 5 tokens at a time through the recurrent cache: same answers
    assert lm.generate_until(gen, disable_tqdm=True) == g3


def test_hf_model_path_matches_gkabench_lm(ckpt):
    """``lm_eval --model hf --model_args pretrained=DIR`` after ``import gkabench``: same log-likelihoods."""
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (lm-eval[hf])")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    ours = B.GKABenchLM(pretrained=str(ckpt), device="cpu", batch_size=2)
    hf = HFLM(pretrained=str(ckpt), device="cpu", batch_size=2)
    reqs = [(None, ours.tok_encode("Question: where?\nAnswer:"), ours.tok_encode(" in the sea")),
            (None, ours.tok_encode("Q: a\nA:"), ours.tok_encode(" b"))]  # fmt: skip
    a, b = ours._loglikelihood_tokens(reqs, disable_tqdm=True), hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert torch.allclose(torch.tensor([s for s, _ in a]), torch.tensor([s for s, _ in b]), atol=1e-4)
    with B.hf_offline(), B.local_datasets(None, B.include_paths(str(TASKS))):
        res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={ckpt}", tasks=["gkabench_tiny_arc"], device="cpu",
                                      task_manager=B.task_manager(str(TASKS), ["gkabench_tiny_arc"]), limit=3)  # fmt: skip
    assert res["results"]["gkabench_tiny_arc"]["acc,none"] is not None


def test_missing_data_is_one_line(ckpt, tmp_path):
    with pytest.raises(ValueError) as e:
        B.run_lm_eval(str(ckpt), ["gkabench_tiny_arc_hub"], include_path=str(TASKS), results_dir=tmp_path, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "gkabench-test/tiny-arc-hub" in msg and "--data" in msg and "HF_DATASETS_OFFLINE" in msg
    try:  # a paper task; skipped where its dataset happens to be cached
        B.run_lm_eval(str(ckpt), ["arc_easy"], results_dir=tmp_path, device="cpu", limit=1)
    except ValueError as exc:
        assert "\n" not in str(exc) and "allenai/ai2_arc" in str(exc) and "DIR/allenai/ai2_arc" in str(exc)
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'gkabench_tiny_ark'.*similar: gkabench_tiny_arc"):
        B.load_tasks(
            B.task_manager(str(TASKS), ["gkabench_tiny_arc"]), ["gkabench_tiny_ark"]
        )  # (run_lm_eval would index all of lm-eval first)
    with pytest.raises(ValueError, match="not a model directory"):
        B.run_lm_eval(str(tmp_path), ["gkabench_tiny_arc"], include_path=str(TASKS))


def test_data_dir_local_copies(ckpt, tmp_path):
    """--data DIR: DIR/<org>/<name> as a copy of the dataset repository, or a save_to_disk copy."""
    import datasets

    repo = tmp_path / "data" / "gkabench-test" / "tiny-arc-hub"
    repo.mkdir(parents=True)
    shutil.copy(TASKS / "tiny_arc_train.jsonl", repo / "train.jsonl")
    shutil.copy(TASKS / "tiny_arc_test.jsonl", repo / "test.jsonl")
    out = B.run_lm_eval(str(ckpt), ["gkabench_tiny_arc_hub"], data_dir=str(tmp_path / "data"), include_path=str(TASKS),
                        results_dir=tmp_path, device="cpu", batch_size=6)  # fmt: skip
    assert out["gkabench_tiny_arc_hub"]["n"] == 6
    saved = tmp_path / "saved" / "gkabench-test__tiny-arc-hub"
    datasets.load_dataset(
        "json", data_files={"train": str(repo / "train.jsonl"), "test": str(repo / "test.jsonl")}
    ).save_to_disk(str(saved))
    out2 = B.run_lm_eval(str(ckpt), ["gkabench_tiny_arc_hub"], data_dir=str(tmp_path / "saved"), include_path=str(TASKS),
                         results_dir=tmp_path, device="cpu", batch_size=6)  # fmt: skip
    assert out2["gkabench_tiny_arc_hub"]["acc"] == out["gkabench_tiny_arc_hub"]["acc"]


def test_paper_tasks_are_known_to_lm_eval():
    tm = B.task_manager(None, list(B.PAPER_TASKS))  # the narrowed index still finds all ten
    assert all(t in tm.task_index for t in B.PAPER_TASKS)
    assert B.TASKS_DIR in B.include_paths(None)


def test_cli_wrapper_adds_include_path(monkeypatch):
    import lm_eval.__main__ as lm_main

    seen = {}
    monkeypatch.setattr(lm_main, "cli_evaluate", lambda: seen.setdefault("argv", list(sys.argv)))
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    B.main(["run", "--model", "gkabench", "--model_args", "pretrained=X", "--tasks", "gkabench_tiny_arc"])
    assert seen["argv"][-2:] == ["--include_path", str(B.TASKS_DIR)]


def test_import_gkabench_is_cheap_and_registers(ckpt):
    """``import gkabench`` loads neither torch nor transformers, yet AutoConfig / AutoModelForCausalLM and
    lm-eval's model registry know gkabench as soon as they are imported (in either order)."""
    script = textwrap.dedent(f"""
        import json, sys, time
        t = time.perf_counter(); import gkabench; dt = time.perf_counter() - t
        heavy = [m for m in ("torch", "transformers", "lm_eval") if m in sys.modules]
        from transformers import AutoConfig, AutoModelForCausalLM
        cfg = AutoConfig.from_pretrained({str(ckpt)!r}, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained({str(ckpt)!r}, local_files_only=True)
        from lm_eval.api.registry import get_model
        print(json.dumps({{"import_s": dt, "heavy": heavy, "type": cfg.model_type, "cls": type(model).__name__,
                          "lm": get_model("gkabench").__name__, "hf": "hf" in __import__("lm_eval.api.registry").api.registry.model_registry}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"import gkabench: {got['import_s'] * 1e3:.0f} ms")
    assert got["heavy"] == [] and got["import_s"] < 1.0
    assert got == {**got, "type": "gkabench", "cls": "GKABenchForCausalLM", "lm": "GKABenchLM", "hf": True}
    # transformers imported before gkabench: registered at import
    script2 = "import transformers.models.auto, lm_eval.api.registry as r, gkabench\nfrom transformers.models.auto.configuration_auto import CONFIG_MAPPING\nassert 'gkabench' in CONFIG_MAPPING and 'gkabench' in r.model_registry"
    res2 = subprocess.run(
        [sys.executable, "-c", script2], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert res2.returncode == 0, res2.stderr[-2000:]


def test_paper_tasks_run_from_local_copies(ckpt, tmp_path):
    """lm-eval's own arc_easy (YAML) and fda (Python class) run offline from --data copies laid out as the hub
    repositories are (configs in the README front matter; fda's default config), with tiny stand-in rows."""
    arc = tmp_path / "data" / "allenai" / "ai2_arc"
    (arc / "ARC-Easy").mkdir(parents=True)
    for split, src in (
        ("train", "tiny_arc_train.jsonl"),
        ("validation", "tiny_arc_test.jsonl"),
        ("test", "tiny_arc_test.jsonl"),
    ):
        shutil.copy(TASKS / src, arc / "ARC-Easy" / f"{split}.jsonl")
    files = "".join(f"  - split: {s}\n    path: ARC-Easy/{s}.jsonl\n" for s in ("train", "validation", "test"))
    (arc / "README.md").write_text(f"---\nconfigs:\n- config_name: ARC-Easy\n  data_files:\n{files}---\n")
    fda = tmp_path / "data" / "hazyresearch" / "based-fda"
    fda.mkdir(parents=True)
    shutil.copy(TASKS / "tiny_fda.jsonl", fda / "validation.jsonl")
    out = B.run_lm_eval(str(ckpt), ["arc_easy", "fda"], data_dir=str(tmp_path / "data"), batch_size=4, device="cpu",
                        results_dir=tmp_path / "eval")  # fmt: skip
    assert (
        out["arc_easy"]["n"] == 6
        and "acc_norm" in out["arc_easy"]
        and out["fda"]["n"] == 4
        and "contains" in out["fda"]
    )
    rows = [json.loads(x) for x in (tmp_path / "eval" / "tiny_gka.jsonl").read_text().splitlines()]
    assert {(r["task"], r["metric"]) for r in rows} >= {("arc_easy", "acc_norm"), ("fda", "contains")}


@pytest.mark.parametrize("mixer", ["gka", "attention"])
def test_prefill_cache_is_per_batch(tmp_path, mixer):
    """A long prompt (prefilled through the cache) then a short one, one per batch, in one call: the short one's
    answer is what it gets alone (the long batch's prefill cache is not carried into the next batch)."""
    from gkabench.models import GKABenchForCausalLM, preset_config
    from gkabench.tokenizers import byte_tokenizer

    torch.manual_seed(0)
    cfg = preset_config("tiny", mixer=mixer, vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    GKABenchForCausalLM(cfg).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = B.GKABenchLM(pretrained=str(tmp_path), device="cpu", batch_size=1, prefill_chunk=8)
    kw = {"until": ["\n"], "max_gen_toks": 6}
    long, mid, short = "The quick brown fox jumps over the lazy dog. " * 2, "Pack my box with five", "Hi, "
    both = lm.generate_until([_Req(long, kw), _Req(mid, kw), _Req(short, kw)], disable_tqdm=True)
    alone = [lm.generate_until([_Req(s, kw)], disable_tqdm=True)[0] for s in (long, mid, short)]
    assert both == alone
    lm.prefill_chunk = None
    assert lm.generate_until([_Req(long, kw), _Req(mid, kw), _Req(short, kw)], disable_tqdm=True) == alone


def test_dtype_names():
    assert B._torch_dtype(None) == "auto" and B._torch_dtype("auto") == "auto"
    assert B._torch_dtype("bf16") is torch.bfloat16 and B._torch_dtype("bfloat16") is torch.bfloat16
    assert B._torch_dtype("fp16") is torch.float16 and B._torch_dtype("float16") is torch.float16
    assert B._torch_dtype("fp32") is torch.float32 and B._torch_dtype("torch.float32") is torch.float32
    assert B._torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        B._torch_dtype("int8")
