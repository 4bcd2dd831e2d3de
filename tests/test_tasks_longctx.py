"""Long-context tasks on CPU: the fictional-facts generator, length fitting (byte and BPE tokenizers), the row
cache and its manifest, scoring, the validity checks (oracle 1.0, closed-book ~0, gold moved out -> 0,
answer-free distractors) and the HELMET / RULER readers on our own fixtures (tests/data/longctx)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gkabench.tasks import longctx
from gkabench.tasks.facts import FactWorld, contains_answer
from gkabench.tasks.fitting import TokenCounter, UnfitLength, fit, format_length, parse_lengths
from gkabench.tasks.formats import read_helmet_rag, read_ruler_hotpotqa, read_ruler_squad
from gkabench.tasks.longctx import build_row, closed_book_answer, context_of, get_rows, oracle_answer, parse_tasks
from gkabench.tasks.scoring import clean_prediction, normalize_answer, recall_all, score_row, substring_exact_match
from gkabench.tokenizers import byte_tokenizer

DATA = Path(__file__).parent / "data" / "longctx"
ALL = parse_tasks("rag,longqa,niah")
# rag needs room for its two 3-passage demos (~2k bytes); the others fit in 1k.
MIN_LEN = {"rag": 3072, "longqa": 1024, "niah": 1024}


@pytest.fixture(scope="module")
def counter():
    return TokenCounter(byte_tokenizer())


@pytest.fixture(scope="module")
def bpe_counter():
    """A small BPE tokenizer trained here on generated text (adds a BOS), for the non-byte fitting path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    w = FactWorld("bpe-train")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([w.entity_passage().text for _ in range(150)], trainer)
    core.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", core.token_to_id("<bos>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    return TokenCounter(tok)


# ----------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = FactWorld("s1"), FactWorld("s1"), FactWorld("s2")
    qa, qb, qc = a.two_hop(), b.two_hop(), c.two_hop()
    assert qa == qb and qa != qc
    assert [a.entity_passage() for _ in range(5)] == [b.entity_passage() for _ in range(5)]
    # The bridge: the first gold passage names the bridge entity, the second states the answer.
    assert (
        qa.bridge in qa.gold[0].text
        and qa.answers[0] in qa.gold[1].text
        and not contains_answer(qa.gold[0].text, qa.answers)
    )


@pytest.mark.parametrize("task,flavour", ALL)
def test_rows_deterministic_and_same_question_across_lengths(task, flavour, counter):
    L = MIN_LEN[task]
    r1, r2 = build_row(task, flavour, L, 2, 0, counter), build_row(task, flavour, L, 2, 0, counter)
    assert r1 == r2
    longer = build_row(task, flavour, 2 * L, 2, 0, counter)
    assert longer["question"] == r1["question"] and longer["answers"] == r1["answers"]
    assert build_row(task, flavour, L, 2, 1, counter)["question"] != r1["question"]  # the seed matters


@pytest.mark.parametrize("task,flavour", ALL)
def test_no_distractor_contains_the_answer(task, flavour, counter):
    for i in range(5):
        row = build_row(task, flavour, 2 * MIN_LEN[task], i, 0, counter)
        ctx = context_of(row)
        assert all(g in ctx for g in row["gold_passages"])
        for g in row["gold_passages"]:
            ctx = ctx.replace(g, "")
        assert not contains_answer(ctx, row["answers"]), (task, flavour, i)
        if task == "rag":  # the demos do not give the test answer away either
            assert not contains_answer(row["prompt"][: row["context_start"]], row["answers"])


# ----------------------------------------------------------------------------------------------- fitting


def test_parse_lengths():
    assert parse_lengths("4k,8k,128k") == [4096, 8192, 131072]
    assert parse_lengths("512, 1000") == [512, 1000]
    assert format_length(131072) == "128k" and format_length(1000) == "1000"
    with pytest.raises(ValueError, match="--lengths"):
        parse_lengths("4x")


@pytest.mark.parametrize("task,flavour", ALL)
@pytest.mark.parametrize("tok", ["byte", "bpe"])
def test_length_fitting_bounds(task, flavour, tok, counter, bpe_counter):
    c = counter if tok == "byte" else bpe_counter
    for L in (MIN_LEN[task], 2 * MIN_LEN[task] + 333):
        row = build_row(task, flavour, L, 1, 0, c)
        n = len(c.tokenizer(row["prompt"], add_special_tokens=True)["input_ids"])
        assert n == row["input_tokens"] and 0.9 * L <= n <= L, (tok, task, flavour, L, n)


def test_gold_depth_is_controlled(counter):
    pos = []
    for i, _depth in enumerate(longctx.DEFAULT_DEPTHS):
        row = build_row("rag", "nq", 8192, i, 0, counter)
        ctx = context_of(row)
        pos.append(ctx.index(row["gold_passages"][0]) / len(ctx))
    assert pos[0] < 0.05 and pos[-1] > 0.9 and pos == sorted(pos)


def test_128k_rows_are_fast(counter):
    for task, flavour in [("rag", "hotpotqa"), ("longqa", "squad"), ("niah", "niah_multikey")]:
        t0 = time.perf_counter()
        row = build_row(task, flavour, 131072, 0, 0, counter)
        assert time.perf_counter() - t0 < 1.0 and 0.9 * 131072 <= row["input_tokens"] <= 131072


def test_unfit_length_is_one_line_error(counter):
    with pytest.raises(UnfitLength, match="pass longer --lengths"):
        build_row("rag", "nq", 512, 0, 0, counter)
    with pytest.raises(UnfitLength, match="too coarse"):  # units of 100 tokens cannot hit 90% of 150
        fit(lambda u: "x" * 20 + "".join(u), lambda: "y" * 100, 150, counter)


# ------------------------------------------------------------------------------------------------- cache


def test_cache_manifest_and_invalidation(tmp_path, counter, bpe_counter, monkeypatch):
    rows = get_rows("niah", "niah_single", 1024, 3, 0, counter=counter, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2
    man = json.loads(next(f for f in files if f.name.endswith(".manifest.json")).read_text())
    assert (
        man["tokenizer_hash"] == counter.hash and man["n"] == 3 and man["length"] == 1024 and man["generator_version"]
    )

    calls = []
    real = longctx.build_row
    monkeypatch.setattr(longctx, "build_row", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert get_rows("niah", "niah_single", 1024, 3, 0, counter=counter, cache_dir=tmp_path) == rows and not calls
    monkeypatch.setattr(longctx, "GENERATOR_VERSION", "facts-test")  # a new generator version rebuilds
    get_rows("niah", "niah_single", 1024, 3, 0, counter=counter, cache_dir=tmp_path)
    assert len(calls) == 3
    get_rows("niah", "niah_single", 1024, 3, 0, counter=bpe_counter, cache_dir=tmp_path)  # another tokenizer too
    assert len(calls) == 6
    get_rows("niah", "niah_single", 1024, 3, 0, counter=bpe_counter, cache_dir=tmp_path)  # now cached
    assert len(calls) == 6


# ----------------------------------------------------------------------------------------------- scoring


def test_scoring():
    assert normalize_answer("The  Quenvar-Mills!") == "quenvarmills"
    assert normalize_answer("an Apple a day") == "apple day"
    assert substring_exact_match("It was the Quenvar Mills, I think", ["quenvar mills"]) == 1.0
    assert substring_exact_match("Quenvar", ["Quenvar Mills"]) == 0.0
    assert substring_exact_match("anything", ["", "the"]) == 0.0  # empty after normalisation never matches
    assert recall_all(": 1234567 and 7654321.", ["1234567", "7654321", "1111111"]) == pytest.approx(2 / 3)
    assert clean_prediction(" Answer: Vorlanth\nQuestion: ...", "Answer:") == "Vorlanth"
    assert score_row("niah", "x 1234567", ["1234567"]) == 1.0 and score_row("rag", "no", ["yes"]) == 0.0
    with pytest.raises(ValueError, match="no scorer"):
        score_row("mqar", "", [])


def test_parse_tasks():
    assert parse_tasks("rag.nq,niah") == [("rag", "nq"), ("niah", "niah_single"), ("niah", "niah_multikey")]
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("ragg")
    with pytest.raises(ValueError, match="no flavour"):
        parse_tasks("rag.squad")


# ------------------------------------------------------------------------------------------------ validity


@pytest.mark.parametrize("task,flavour", ALL)
def test_oracle_closed_book_and_gold_removed(task, flavour, counter):
    rows = [build_row(task, flavour, MIN_LEN[task], i, 0, counter) for i in range(10)]
    oracle = [score_row(task, oracle_answer(r), r["answers"]) for r in rows]
    closed = [score_row(task, closed_book_answer(r), r["answers"]) for r in rows]
    assert sum(oracle) / len(oracle) == 1.0
    assert sum(closed) / len(closed) <= 0.1
    gone = [build_row(task, flavour, MIN_LEN[task], i, 0, counter, gold_in_context=False) for i in range(10)]
    assert all(score_row(task, oracle_answer(r), r["answers"]) == 0.0 for r in gone)
    assert all(not contains_answer(context_of(r), r["answers"]) for r in gone)  # nothing left to read it from
    assert all(0.9 * r["length"] <= r["input_tokens"] <= r["length"] for r in gone)


# --------------------------------------------------------------------------------------------- real data


def test_helmet_reader_on_fixture():
    examples, pool = read_helmet_rag(DATA / "kilt" / "nq-dev-fixture_k8.jsonl")
    assert len(examples) == 6
    for ex in examples:  # one gold per row, flagged (even rows) or found by the answer (odd rows)
        assert len(ex.gold) == 1 and contains_answer(pool.docs[ex.gold[0]][1], ex.answers) and len(ex.own) == 7


def test_ruler_readers_on_fixtures():
    squad, pool = read_ruler_squad(DATA / "squad.json")
    assert len(squad) == 12  # 3 articles x 4 paragraphs, the unanswerable questions skipped
    assert all(contains_answer(pool.docs[ex.gold[0]][1], ex.answers) for ex in squad)
    hot, hpool = read_ruler_hotpotqa(DATA / "hotpotqa.json")
    assert len(hot) == 5 and all(len(ex.gold) == 4 for ex in hot)
    title, text = hpool.docs[hot[0].gold[0]]
    assert title and text.endswith(".")


@pytest.mark.parametrize(
    "task,flavour,L", [("rag", "nq", 4096), ("longqa", "squad", 2048), ("longqa", "hotpotqa", 2048)]
)
def test_rows_from_real_data(task, flavour, L, counter):
    rows = get_rows(task, flavour, L, 6, 0, counter=counter, cache_dir=False, data_dir=str(DATA))
    assert all(r["source"].split(":")[0] in ("helmet", "ruler") for r in rows)
    assert all(0.9 * L <= r["input_tokens"] <= L for r in rows)
    assert all(score_row(task, oracle_answer(r), r["answers"]) == 1.0 for r in rows)
    if task == "rag":  # the two demos come from HELMET's train file beside the test file
        train_qs, _ = read_helmet_rag(DATA / "kilt" / "nq-train-fixture_k3.jsonl")
        assert all(
            sum(f"Question: {d.question}\n" in r["prompt"][: r["context_start"]] for d in train_qs) == 2 for r in rows
        )
    for r in rows:
        ctx = context_of(r)
        for g in r["gold_passages"]:
            ctx = ctx.replace(g, "")
        assert not contains_answer(ctx, r["answers"])


def test_real_data_errors(tmp_path, counter):
    with pytest.raises(FileNotFoundError, match="no HELMET file popqa"):
        get_rows("rag", "popqa", 4096, 1, 0, counter=counter, cache_dir=False, data_dir=str(DATA))
    with pytest.raises(ValueError, match="too few distractor documents"):
        get_rows("rag", "nq", 65536, 1, 0, counter=counter, cache_dir=False, data_dir=str(DATA))
    (tmp_path / "squad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not SQuAD json"):
        get_rows("longqa", "squad", 2048, 1, 0, counter=counter, cache_dir=False, data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------ training stream


def test_facts_training_source_and_two_steps(tmp_path):
    from gkabench.train import FactsSource, TrainConfig, train

    tok = byte_tokenizer()
    src = FactsSource(tok, seq_len=1024, seed=0)
    assert ("rag", "nq") not in src.specs and ("niah", "niah_single") in src.specs  # rag's demos need > 1k bytes
    b = src.micro_batch(3, 1, 2, 4)
    assert b["input_ids"].shape == (2, 1024) and torch.equal(b["input_ids"], src.micro_batch(3, 1, 2, 4)["input_ids"])
    text = tok.decode(b["input_ids"][0][b["labels"][0] != -100], skip_special_tokens=True)
    assert text.rstrip().endswith(".") or "Answer:" in text  # a prompt followed by its answer
    assert not torch.equal(src.micro_batch(0, 0, 1, 2, "eval")["input_ids"], src.micro_batch(0, 0, 1, 2)["input_ids"])
    summary = train(TrainConfig(out_dir=str(tmp_path / "run"), mixer="attention", data="facts", seq_len=1024, batch_size=2,
                                steps=2, warmup_steps=1, eval_every=2, eval_batches=1, save_every=0, progress=False))  # fmt: skip
    assert summary["step"] == 2 and np.isfinite(summary["eval_loss"])


def test_niah_haystack_from_ruler_essays(counter):
    from gkabench.tasks.formats import read_ruler_essays

    sents, _ = read_ruler_essays(DATA)
    assert len(sents) == 20 and sents[0].startswith("The first garden")
    rows = get_rows("niah", "niah_multikey", 2048, 3, 0, counter=counter, cache_dir=False, data_dir=str(DATA))
    for r in rows:
        assert r["source"] == "ruler:PaulGrahamEssays.json" and 0.9 * 2048 <= r["input_tokens"] <= 2048
        assert score_row("niah", oracle_answer(r), r["answers"]) == 1.0
        body = r["prompt"].split("\n")[1]
        for s in sents[:3]:
            assert s in body  # the essay wraps around, so every sentence is in a 2k haystack


def test_lm_eval_adapter(tmp_path):
    from gkabench.tasks.longctx import lm_eval_aggregate, lm_eval_dataset, lm_eval_process_results

    ds = lm_eval_dataset(
        gkabench_task="niah.niah_single,longqa.squad", max_seq_lengths=["1k", 2048], n=2, cache_dir=str(tmp_path)
    )["test"]
    assert len(ds) == 8 and set(ds["max_length"]) == {1024, 2048} and set(ds["task"]) == {"niah", "longqa"}
    per_length: dict = {}
    for doc in ds:  # an oracle generation: the gold answer, then a newline and chatter
        res = lm_eval_process_results(doc, [" " + " ".join(doc["outputs"]) + "\nmore"])
        assert res[str(doc["max_length"])] == 1.0 and sorted(res) == ["1024", "2048"]
        for k, v in res.items():
            per_length.setdefault(k, []).append(v)
    assert lm_eval_aggregate(per_length["1024"]) == 1.0 and lm_eval_aggregate([-1.0]) == -1.0
    with pytest.raises(ValueError, match="gkabench_task"):
        lm_eval_dataset(max_seq_lengths=[1024])


# ----------------------------------------------------------------------------- multi-question training documents


def test_multi_question_training_text_keeps_each_answer_in_its_own_gold_passages():
    """Training documents with several questions over one context: they fit, are a pure function of their
    arguments, end with every question and its answer, and each answer is readable only from its own gold
    passage(s): no other passage holds it."""
    import re

    from gkabench.tasks.facts import contains_answer
    from gkabench.tasks.fitting import TokenCounter
    from gkabench.tasks.longctx import training_text
    from gkabench.tokenizers import load_tokenizer

    tok = load_tokenizer(None)
    counter = TokenCounter(tok)
    for flavour in ("nq", "popqa", "hotpotqa"):
        for index in range(3):
            text = training_text(index, 4096, 0, counter, [("rag", flavour)], questions=4)
            assert text == training_text(index, 4096, 0, counter, [("rag", flavour)], questions=4)
            assert counter.count(text) <= 4096 - 8
            body, _, tail = text.partition("\n\nQuestion: ")
            qa = re.findall(r"Question: (.*)\nAnswer: (.*)", "Question: " + tail)
            assert len(qa) == 4 and len({a for _, a in qa}) == 4
            passages = [p for p in body.split("\n\n") if p.startswith("Document (Title:")]
            assert len(passages) >= 8  # gold passages among at least as many distractors
            for _, answer in qa:
                holders = [p for p in passages if contains_answer(p, [answer])]
                assert len(holders) == 1, (flavour, answer)  # its gold passage (two-hop: the second hop's)


def test_facts_source_with_questions_builds_multi_question_rag_documents():
    from gkabench.tokenizers import load_tokenizer
    from gkabench.train import FactsSource

    src = FactsSource(load_tokenizer(None), seq_len=4096, seed=0, questions=4)
    docs = [src._doc(k, "train") for k in range(6)]
    assert all(0 < len(d) <= 4096 for d in docs)
    texts = [src.tokenizer.decode(d) for d in docs]
    rag = [t for t in texts if t.startswith("Use the documents below")]
    assert rag and all(t.count("\nQuestion: ") == 4 for t in rag)
