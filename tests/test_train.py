"""The training loop on CPU: a tiny MQAR run learns, resume after an interruption equals an uninterrupted run,
the JSONL log and checkpoint are written, text files are packed with cu_seqlens, and 2-process gloo DDP equals
one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gkabench.train import TextSource, TrainConfig, find_checkpoint, train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP threads contending
    with other processes slow these runs down ~10x; one thread keeps the timings stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(out_dir, **kw) -> TrainConfig:
    base = dict(
        out_dir=str(out_dir), mixer="attention", preset="tiny", data="mqar", seq_len=24, mqar_vocab=32, mqar_pairs=4,
        steps=12, batch_size=8, lr=3e-3, warmup_steps=3, weight_decay=0.1, eval_every=6, eval_batches=2,
        log_every=1, save_every=4, progress=False, seed=0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_mqar_run_beats_chance_by_far(tmp_path):
    """2-layer attention, 4 pairs, 16 possible values (chance 1/16): 100 steps reach several times chance."""
    s = train(small(tmp_path, steps=100, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=100, eval_batches=8, log_every=25, save=False))
    chance = 1 / 16
    assert s["eval_acc"] > 3 * chance, s["eval_acc"]
    assert s["loss"] < 2.5


def test_tiny_gka_mqar_run_beats_chance_by_far(tmp_path):
    """The paper's MQAR variant of GKA (no decay gate, no alpha: the pure ridge readout), 2 layers, on the
    pure-PyTorch chunked op: 100 steps reach several times chance (measured 0.35 vs 1/16)."""
    cfg = small(tmp_path, mixer="gka", steps=100, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=100, eval_batches=8,
                log_every=25, save=False, mixer_options={"gka": {"use_decay": False, "use_alpha": False}})  # fmt: skip
    s = train(cfg)
    assert s["eval_acc"] > 3 / 16, s["eval_acc"]


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    full = train(small(tmp_path / "full"))
    part = train(small(tmp_path / "resumed", stop_at=6))  # "interrupted" after step 6 (checkpoint at 4 and 6)
    assert part["step"] == 6 and not part["finished"]
    assert find_checkpoint(tmp_path / "resumed") is not None
    resumed = train(small(tmp_path / "resumed"))
    assert resumed["step"] == 12 and resumed["finished"]
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)
    for (name, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # the resumed log reads like the uninterrupted one: each step once, same losses
    def steps(p):
        return [(r["step"], round(r["loss"], 5)) for r in read_log(p / "log.jsonl") if "loss" in r and "step" in r]

    assert steps(tmp_path / "resumed") == steps(tmp_path / "full")


def test_log_and_checkpoint_files(tmp_path):
    train(small(tmp_path, steps=4, eval_every=2))
    rows = read_log(tmp_path / "log.jsonl")
    assert rows[0]["event"] == "start" and rows[0]["env"]["torch"] == torch.__version__
    assert rows[0]["config"]["mixer"] == "attention"
    train_rows = [r for r in rows if "tokens_per_s" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if "eval_acc" in r and "event" not in r] == [2, 4]
    assert rows[-1]["event"] == "end"
    ckpt = tmp_path / "checkpoint"
    for f in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"):
        assert (ckpt / f).exists(), f
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.vocab_size == 32
    assert AutoTokenizer.from_pretrained(ckpt)("hi")["input_ids"] == [104, 105]
    assert not list(tmp_path.glob(".checkpoint*"))  # no temp dirs left


def test_text_files_are_packed_with_cu_seqlens(tmp_path):
    docs = ["alpha beta gamma " * 3, "second document here", "x" * 50, "the fourth one, a bit longer " * 4]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs * 3))
    from gkabench.tokenizers import load_tokenizer

    tok = load_tokenizer(None)
    src = TextSource([str(jsonl)], tok, seq_len=32, packing=True, text_field="text", seed=0)
    b = src.micro_batch(0, 0, 1, 4)
    ids, labels, cu = b["input_ids"], b["labels"], b["cu_seqlens"]
    assert ids.shape == (1, 128) and cu[0] == 0 and cu[-1] == 128
    assert set(range(0, 128, 32)) <= set(cu.tolist())  # every chunk boundary is a sequence boundary
    starts = cu[:-1].long()
    assert (labels[0, starts] == -100).all()  # no target at a document's first token
    eos_pos = (ids[0] == tok.eos_token_id).nonzero().flatten()
    assert set((eos_pos + 1).tolist()) - {128} <= set(cu.tolist())  # a new document starts after every EOS
    # and the loop runs on it (packed, cu_seqlens through every layer)
    s = train(small(tmp_path / "run", data=str(jsonl), seq_len=32, steps=3, batch_size=4, eval_every=3, eval_batches=1))
    assert s["finished"] and s["eval_loss"] > 0
    txt = tmp_path / "d.txt"
    txt.write_text("\n\n".join(docs * 3))
    s = train(small(tmp_path / "run_txt", data=str(txt), seq_len=32, steps=2, batch_size=4, eval_every=0, packing=False, save=False))
    assert s["finished"]


def test_max_minutes_checkpoints_and_stops_then_resumes(tmp_path):
    """--max-minutes 0 stops after the first step with a checkpoint; the same command again continues to the end."""
    part = train(small(tmp_path, max_minutes=0.0))
    assert part["step"] == 1 and not part["finished"]
    assert find_checkpoint(tmp_path) is not None
    done = train(small(tmp_path))
    assert done["step"] == 12 and done["finished"]


def test_early_stop_ends_a_run_at_the_first_eval_reaching_the_accuracy(tmp_path):
    """early_stop_acc: the run ends at the first periodic evaluation whose MQAR accuracy reaches it (a threshold of
    0 is reached by any evaluation; 1.01 by none), logs the event and reports the steps it ran."""
    s = train(small(tmp_path / "a", steps=30, eval_every=6, early_stop_acc=0.0, save=False))
    assert s["step"] == 6 and not s["finished"] and "eval_acc" in s
    events = [r for r in read_log(tmp_path / "a" / "log.jsonl") if r.get("event") == "early_stop"]
    assert len(events) == 1 and events[0]["step"] == 6
    s = train(small(tmp_path / "b", steps=12, eval_every=6, early_stop_acc=1.01, save=False))
    assert s["step"] == 12 and s["finished"]


def test_resume_with_other_settings_is_refused(tmp_path):
    train(small(tmp_path, steps=2, eval_every=0))
    with pytest.raises(ValueError, match="mixer='attention' there vs 'gka' now.*--no-resume"):
        train(small(tmp_path, steps=4, mixer="gka"))
    s = train(small(tmp_path, steps=2, eval_every=0, mixer="gla", resume=False))  # starts over
    assert s["finished"] and read_log(tmp_path / "log.jsonl")[0]["config"]["mixer"] == "gla"


def test_user_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data mqar"):
        train(small(tmp_path, data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="divisible"):
        train(small(tmp_path, batch_size=7, grad_accum=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, result_file: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    s = train(small(out_dir, steps=4, eval_every=4, save_every=0))
    if rank == 0:
        torch.save({"loss": s["loss"], "eval_loss": s["eval_loss"], "state": s["model"].state_dict()}, result_file)


def test_ddp_two_processes_gloo_equal_single_process(tmp_path):
    """2 ranks x batch 4 == 1 rank with 2 accumulation steps of 4 (same global batch, same data order)."""
    res = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(res)), nprocs=2, join=True, start_method="fork")
    ddp = torch.load(res, weights_only=False)
    single = train(small(tmp_path / "single", steps=4, eval_every=4, save_every=0, grad_accum=2))
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert ddp["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-4)
    for (name, a), b in zip(ddp["state"].items(), single["model"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    rows = read_log(tmp_path / "ddp" / "log.jsonl")
    assert rows[0]["world_size"] == 2 and (tmp_path / "ddp" / "checkpoint").exists()


# ------------------------------------------------------------------------------------------ review fixes


def test_facts_every_document_fits_deterministically():
    """At 2048 bytes some rag draws' fixed part (question, demos, gold passages) is longer than the length; such a
    document is redrawn deterministically instead of aborting the run (documents 2, 8, 15, 44 did)."""
    from gkabench.tasks.longctx import training_text
    from gkabench.tokenizers import load_tokenizer
    from gkabench.train import FactsSource

    src = FactsSource(load_tokenizer(None), seq_len=2048, seed=0)
    docs = [src._doc(k, "train") for k in range(48)]
    assert all(0 < len(d) <= 2048 for d in docs)
    assert src._doc(2, "train") == docs[2] and src._doc(44, "train") == docs[44]  # a pure function of (seed, k)
    direct = src.tokenizer(training_text(0, 2048, 0, src.counter, src.specs), add_special_tokens=True)["input_ids"]
    assert docs[0] == (direct + [src.eos])[:2048]  # documents that fit are unchanged
    b = src.micro_batch(0, 0, 1, 4)  # the batch of `train --data facts --seq-len 2048 --batch-size 4 --steps 1`
    assert b["input_ids"].shape == (4, 2048)


def test_facts_document_that_never_fits_names_seq_len(monkeypatch):
    from gkabench.tasks.fitting import UnfitLength
    from gkabench.tokenizers import load_tokenizer
    from gkabench.train import FactsSource

    src = FactsSource(load_tokenizer(None), seq_len=2048, seed=0)

    def never(*a, **kw):
        raise UnfitLength("rag/nq at 1984: too long; pass longer --lengths")

    monkeypatch.setattr(src, "_text", never)
    with pytest.raises(ValueError, match="--seq-len 2048") as e:
        src._doc(5, "train")
    assert "--lengths" not in str(e.value)


@pytest.mark.parametrize("field,option", [("grad_accum", "--grad-accum"), ("log_every", "--log-every"),
                                          ("batch_size", "--batch-size"), ("steps", "--steps")])  # fmt: skip
def test_zero_counts_are_one_line_errors(tmp_path, field, option):
    with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got 0"):
        train(small(tmp_path, **{field: 0}))


def test_cli_train_user_errors_exit_2_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from gkabench.cli import app

    bad_tok = tmp_path / "notes.json"
    bad_tok.write_text('{"not": "a tokenizer"}')
    for args, msg in ((["--grad-accum", "0"], "--grad-accum"), (["--log-every", "0"], "--log-every"),
                      (["--batch-size", "0"], "--batch-size"), (["--data", "x.txt", "--tokenizer", str(bad_tok)], "notes.json")):  # fmt: skip
        r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--steps", "1", *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)


def test_non_tokenizer_json_is_a_value_error_naming_the_file(tmp_path):
    from gkabench.tokenizers import load_tokenizer

    p = tmp_path / "config.json"
    p.write_text('{"vocab_size": 12}')
    with pytest.raises(ValueError, match="config.json could not be read as a tokenizer.json"):
        load_tokenizer(p)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "tokenizer.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="tokenizer.json could not be read"):
        load_tokenizer(d)


def test_nan_loss_is_a_one_line_error_and_keeps_the_checkpoint(tmp_path):
    # lr 1e30 with no warm-up: the first updates blow the weights up, and a few steps in the loss is not finite
    import re

    cfg = small(tmp_path, steps=8, lr=1e30, warmup_steps=0, save_every=1, eval_every=0, grad_clip=0.0)
    with pytest.raises(ValueError, match=r"diverged: loss is nan at step \d+ \(the checkpoint of step \d+ .* kept\).*lower --lr") as e:
        train(cfg)
    bad, kept = map(int, re.search(r"at step (\d+) \(the checkpoint of step (\d+)", str(e.value)).groups())
    assert kept == bad - 1 and "\n" not in str(e.value)
    ckpt = find_checkpoint(tmp_path)
    assert ckpt is not None and torch.load(ckpt / "trainer_state.pt", weights_only=False)["step"] == kept
    last = read_log(tmp_path / "log.jsonl")[-1]
    assert last["event"] == "diverged" and last["step"] == bad


def test_torn_log_line_does_not_block_resume(tmp_path):
    train(small(tmp_path, stop_at=6))
    log = tmp_path / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 7, "loss": 1.2')  # killed mid-write
    s = train(small(tmp_path))
    assert s["finished"] and s["step"] == 12
    rows = read_log(log)  # every line parses: the torn one was dropped on resume
    assert [r["step"] for r in rows if "tokens_per_s" in r] == list(range(1, 13))


def test_log_rows_after_a_torn_line_start_on_a_fresh_line(tmp_path):
    from gkabench.train import JsonlLog

    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "lo')
    JsonlLog(p, True).write({"step": 3})
    assert p.read_text().splitlines()[-1] == '{"step": 3}'


def test_guard_lift_is_recorded_for_every_run_in_a_process(tmp_path, monkeypatch):
    """fla's flag is flipped by the first lift, so a second lift in the same process reports no active guard; the
    record must still say the guard was lifted (MQAR sweeps train many runs per process)."""
    from gkabench.layers import fla_guard

    state = {"active": True}

    def fake_lift():  # what lift_fla_hopper_guard does on a Hopper GPU with Triton < 3.7.1
        was = state["active"]
        state["active"] = False
        if was:
            fla_guard.GUARD_LIFTED = True
        return was

    monkeypatch.setattr(fla_guard, "lift_fla_hopper_guard", fake_lift)
    monkeypatch.setattr(fla_guard, "GUARD_LIFTED", False)
    for i in range(2):
        s = train(small(tmp_path / f"r{i}", steps=2, eval_every=2, save=False, lift_fla_guard=True))
        assert s.get("fla_guard_lifted") is True, i
        start = next(r for r in read_log(tmp_path / f"r{i}" / "log.jsonl") if r.get("event") == "start")
        assert start["fla_guard_lifted"] is True


def test_cuda_graph_is_refused_where_it_cannot_run_and_the_run_trains_eagerly(tmp_path):
    """--cuda-graph needs one CUDA process on MQAR without accumulation; elsewhere the run trains exactly as
    without it and its summary and end event say why (on this CPU machine: no CUDA device)."""
    from gkabench.train_graph import graph_unsupported

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert "CUDA" in graph_unsupported(small(tmp_path), 1, cpu)
    assert graph_unsupported(small(tmp_path), 1, gpu) is None
    assert "one process" in graph_unsupported(small(tmp_path), 2, gpu)
    assert "accumulation" in graph_unsupported(small(tmp_path, grad_accum=2), 1, gpu)
    assert "mqar" in graph_unsupported(small(tmp_path, data="notes.txt"), 1, gpu)
    if torch.cuda.is_available():
        pytest.skip("the CPU fallback is what this test checks")
    plain = train(small(tmp_path / "plain", steps=6, save=False, device="cpu"))
    graphed = train(small(tmp_path / "graph", steps=6, save=False, device="cpu", cuda_graph=True))
    assert graphed["cuda_graph"] == "off: needs a CUDA device"
    assert graphed["loss"] == plain["loss"] and "cuda_graph" not in plain
    end = [r for r in read_log(tmp_path / "graph" / "log.jsonl") if r.get("event") == "end"][0]
    assert end["cuda_graph"] == "off: needs a CUDA device"


def test_mqar_batches_never_score_more_targets_than_the_graph_capacity():
    """A CUDA-graph step pads each batch's scored positions to MQARSource.max_scored_targets: with the curriculum
    mixture the count varies from batch to batch, and the largest must fit."""
    from gkabench.data import MQARSource
    from gkabench.models.modeling import loss_positions_of
    from gkabench.tasks.mqar import MQARConfig

    for curriculum in (False, True):
        src = MQARSource(MQARConfig(vocab_size=64, seq_len=40, num_pairs=8), seed=0, curriculum=curriculum)
        cap = src.max_scored_targets(16)
        counts = [len(loss_positions_of(src.micro_batch(s, 0, 1, 16)["labels"])) for s in range(20)]
        assert max(counts) <= cap == 16 * 8
        assert (len(set(counts)) > 1) == curriculum  # the mixture varies the count; the target alone does not


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_equal_eager_steps_on_the_gpu(tmp_path):
    """On a GPU: the same run with and without --cuda-graph (captured after 3 eager steps) gives the same losses
    to bf16 rounding; the summary says the graph was on."""
    kw = dict(mixer="attention", steps=10, batch_size=16, save=False, log_every=1, eval_every=0)
    eager = train(small(tmp_path / "eager", **kw))
    graphed = train(small(tmp_path / "graph", cuda_graph=True, **kw))
    assert graphed["cuda_graph"] == "on from step 4"  # steps 1-3 eager (warm-up), then replays
    a = [r["loss"] for r in read_log(tmp_path / "eager" / "log.jsonl") if "loss" in r and "step" in r and "event" not in r]
    b = [r["loss"] for r in read_log(tmp_path / "graph" / "log.jsonl") if "loss" in r and "step" in r and "event" not in r]
    assert len(a) == len(b) == 10
    for x, y in zip(a, b):
        assert abs(x - y) <= 2e-2 * abs(x), (a, b)
