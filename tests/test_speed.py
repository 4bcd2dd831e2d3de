"""The speed harness on CPU at tiny shapes: files, failure cells, Ctrl-C, resume, FLOP counts, parsers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gkabench.bench import cases, sweep
from gkabench.bench.config import parse_lengths, parse_size
from gkabench.bench.flops import gka_flops, gka_readout_flops_per_token, gka_solve_flops_per_token
from gkabench.bench.speed import make_config, run_speed

CPU = torch.device("cpu")


def tiny(mixers="gka,gla,attention", levels="op", modes="fwd,fwdbwd,prefill,decode", lengths="4,8", **kw):
    cfg = make_config(device=CPU, mixers=mixers, levels=levels, modes=modes, lengths=lengths, tokens="16",
                      heads=1, head_dim=8, hidden=8, num_iter=2, decode_batches="1,2", rep_ms=1, **kw)  # fmt: skip
    cfg.min_reps, cfg.input_sets, cfg.warmup_ms = 1, 2, 0
    return cfg


def jsonl_rows(result):
    return [json.loads(x) for x in result.stem.with_suffix(".jsonl").read_text().splitlines()]


def test_tiny_sweep_writes_every_output(tmp_path):
    cfg = tiny(mixers="all", levels="op,layer")
    res = run_speed(cfg, CPU, tmp_path)
    rows = jsonl_rows(res)
    assert len(rows) == len(sweep.plan(cfg))
    bad = [(r["level"], r["mode"], r["mixer"], r["status"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    for suffix in (".jsonl", ".csv", ".md", ".png"):
        p = res.stem.with_suffix(suffix)
        assert p.exists() and p.stat().st_size > 0, p
    assert res.stem.name.endswith("-cpu-matched")
    r = rows[0]
    assert r["env"]["torch"] == torch.__version__ and "git_sha" in r["env"] and "command" in r["env"]
    from gkabench.env import code_hash

    assert r["env"]["code_hash"] == code_hash() and len(code_hash()) == 12  # the code that ran, whatever .git says
    assert r["preset"] == "matched" and r["dtype"] == "fp32" and r["fla_guard_lifted"] is False
    gka_fwd = [r for r in rows if r["mixer"] == "gka" and r["level"] == "op" and r["mode"] == "fwdbwd"]
    assert all(r["tflops"] > 0 and r["flops"] == gka_flops(r["batch"], r["T"], 1, 8, 8, 2, backward=True) for r in gka_fwd)
    dec = [r for r in rows if r["mode"] == "decode"]
    assert {r["decode_batch"] for r in dec} == {1, 2} and all(r["us_per_step"] > 0 for r in dec)
    md = res.stem.with_suffix(".md").read_text()
    assert "CPU numbers" in md and "preset: **matched**" in md
    assert "## forward + backward, core op only" in md and "## decode" in md and "full layer" in md
    assert "| gka |" in md
    csv_head = res.stem.with_suffix(".csv").read_text().splitlines()[0]
    assert csv_head.startswith("level,mode,mixer,T") and "env_git_sha" in csv_head
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_failing_cell_is_recorded_and_sweep_goes_on(tmp_path, monkeypatch):
    from gkabench.bench import ops

    real = ops.forward

    def flaky(name, inp, **kw):
        if name == "gla":
            raise RuntimeError("simulated kernel failure\nsecond line")
        if name == "attention" and inp["q"].shape[1] == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        return real(name, inp, **kw)

    monkeypatch.setattr(ops, "forward", flaky)
    res = run_speed(tiny(modes="fwd,prefill"), CPU, tmp_path)
    rows = {(r["mode"], r["mixer"], r["T"]): r["status"] for r in jsonl_rows(res)}
    assert rows[("fwd", "gla", 4)] == "error: RuntimeError: simulated kernel failure"
    assert rows[("fwd", "gla", 8)].startswith("error")
    assert rows[("fwd", "attention", 4)] == "oom"
    assert rows[("fwd", "attention", 8)] == "skipped: oom at T=4"  # longer T of an OOM series is not tried
    assert rows[("fwd", "gka", 8)] == "ok" and rows[("prefill", "gka", 8)] == "ok"
    md = res.stem.with_suffix(".md").read_text()
    assert "| gla | err | err |" in md and "| attention | OOM | skip |" in md


def test_slow_cell_skips_longer_lengths(tmp_path):
    cfg = tiny(mixers="gka", modes="fwd", lengths="4,8,16")
    cfg.max_call_s = 0.0
    res = run_speed(cfg, CPU, tmp_path)
    st = [r["status"] for r in jsonl_rows(res)]
    assert st[0].startswith("slow: one call took") and st[1:] == ["skipped: slow at T=4"] * 2


def test_ctrl_c_keeps_rows_done(tmp_path, monkeypatch):
    real, calls = cases.build_case, []

    def interrupt_third(*a, **kw):
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sweep, "build_case", interrupt_third)
    res = run_speed(tiny(modes="fwd"), CPU, tmp_path)
    assert res.interrupted and "interrupted" in res.incomplete
    assert len(jsonl_rows(res)) == 2
    assert "Incomplete sweep" in res.stem.with_suffix(".md").read_text()


def test_resume_skips_done_cells_and_retries_errors(tmp_path, monkeypatch):
    run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4"), CPU, tmp_path)
    seen = []
    real = cases.build_case

    def count(cfg, level, mode, mixer, T, b, device):
        seen.append((mixer, T))
        return real(cfg, level, mode, mixer, T, b, device)

    monkeypatch.setattr(sweep, "build_case", count)
    res = run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4,8"), CPU, tmp_path, resume=True)
    assert sorted(seen) == [("gka", 8), ("gla", 8)]
    assert len(jsonl_rows(res)) == 4
    # an error row is measured again on resume
    path = res.stem.with_suffix(".jsonl")
    rows = jsonl_rows(res)
    rows[0]["status"] = "error: RuntimeError: transient"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')  # and a torn last line is ignored
    seen.clear()
    run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4,8"), CPU, tmp_path, resume=True)
    assert seen == [(rows[0]["mixer"], rows[0]["T"])]


def test_resume_measures_again_when_the_code_changed(tmp_path, monkeypatch):
    # Rows record which code they measured (a hash of our kernels' sources for GKA, fla's version for fla ops,
    # plus the layer code for --level layer). After a kernel change, resume measures the cell again and the table
    # shows the new row; rows without the field (older files) count as stale.
    from gkabench.bench import fingerprint

    res = run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4"), CPU, tmp_path)
    rows = jsonl_rows(res)
    codes = {r["mixer"]: r["code"] for r in rows}
    assert codes["gka"].startswith("gkabench.kernels.gka@") and codes["gla"].startswith("fla-")
    seen = []
    real = cases.build_case

    def count(cfg, level, mode, mixer, T, b, device):
        seen.append(mixer)
        return real(cfg, level, mode, mixer, T, b, device)

    monkeypatch.setattr(sweep, "build_case", count)
    run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4"), CPU, tmp_path, resume=True)
    assert seen == []  # same code: done
    monkeypatch.setattr(fingerprint, "op_fingerprint", lambda m: "edited" if m == "gka" else codes[m])
    fingerprint.code_fingerprint.cache_clear()
    run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4"), CPU, tmp_path, resume=True)
    assert seen == ["gka"]  # only the mixer whose code changed
    assert jsonl_rows(res)[-1]["code"] == "edited"
    path = res.stem.with_suffix(".jsonl")
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "code"}) + "\n" for r in rows))
    seen.clear()
    run_speed(tiny(mixers="gka,gla", modes="fwd", lengths="4"), CPU, tmp_path, resume=True)
    assert sorted(seen) == ["gka", "gla"]  # rows without a code field are stale
    fingerprint.code_fingerprint.cache_clear()


def test_resume_only_skips_cells_of_the_same_sizes(tmp_path, monkeypatch):
    # A resume with other heads / head dim / hidden / token budget / num_iter measures its cells anew instead of
    # reusing rows of other sizes; the md states the sizes of the rows it shows, and only those.
    first = run_speed(tiny(mixers="gka", modes="fwd", lengths="4"), CPU, tmp_path)
    seen = []
    real = cases.build_case

    def count(cfg, level, mode, mixer, T, b, device):
        seen.append((cfg.heads, cfg.head_dim, cfg.hidden, cfg.tokens, cfg.num_iter))
        return real(cfg, level, mode, mixer, T, b, device)

    monkeypatch.setattr(sweep, "build_case", count)
    for kw in ({"heads": 2}, {"head_dim": 4}, {"hidden": 16}, {"tokens": "32"}, {"num_iter": 3}):
        seen.clear()
        base = {"mixers": "gka", "levels": "op", "modes": "fwd", "lengths": "4", "tokens": "16", "heads": 1, "head_dim": 8,
                "hidden": 8, "num_iter": 2, "decode_batches": "1,2", "rep_ms": 1}  # fmt: skip
        cfg = make_config(device=CPU, **{**base, **kw})
        cfg.min_reps, cfg.input_sets, cfg.warmup_ms = 1, 2, 0
        res = run_speed(cfg, CPU, tmp_path, resume=True)
        assert res.stem == first.stem and len(seen) == 1, kw  # measured again, into the same file
        md = res.stem.with_suffix(".md").read_text()
        assert f"`{cfg.sizes}`" in md and md.count("| gka |") == 1
    seen.clear()
    run_speed(tiny(mixers="gka", modes="fwd", lengths="4"), CPU, tmp_path, resume=True)
    assert seen == []  # identical sizes: the cell is done
    rows = jsonl_rows(first)
    assert len({r["sizes"] for r in rows}) == 6 and all(r["sizes"].startswith("heads") for r in rows)
    csv_text = first.stem.with_suffix(".csv").read_text()
    assert ",sizes," in csv_text.splitlines()[0] and csv_text.count("\n") == 2  # header + the one row of these sizes


def test_rows_appended_after_a_torn_line_start_on_a_fresh_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"torn": ')
    sweep.append_row(path, {"b": 2})
    assert sweep.read_rows(path) == [{"a": 1}, {"b": 2}]


def test_max_minutes_stops_between_cells(tmp_path):
    res = run_speed(tiny(modes="fwd", max_minutes=0.0), CPU, tmp_path)
    assert res.incomplete and "--resume" in res.incomplete and res.rows == []


def test_gka_flop_count():
    # gka-spec.md section 3: each iteration 2 D^2 + 4 C D per token per head; ~2 MFLOP at D 128, C 64, r 30
    assert gka_solve_flops_per_token(128, 30, 64) == 30 * (2 * 128 * 128 + 4 * 64 * 128) == 1_966_080
    assert 0.05e6 < gka_readout_flops_per_token(128, 128) < 0.15e6  # "~0.1 MFLOP for the GLA readout"
    f = gka_flops(1, 1, 1, 128, 128, 30)
    assert gka_flops(2, 3, 4, 128, 128, 30) == 24 * f  # linear in B, T, H
    fb = gka_flops(1, 1, 16, 128, 128, 30, backward=True)
    assert 60e6 < fb < 75e6  # ANCHORS.md: ~70 MFLOP per token for forward+backward at 16 heads
    assert gka_flops(1, 1, 1, 128, 128, 60) > 1.9 * f  # dominated by the solve
    with pytest.raises(ValueError):
        gka_flops(0, 1, 1, 128, 128, 30)


def test_lengths_parser():
    assert parse_lengths("1k,2k,4k") == [1024, 2048, 4096]
    assert parse_lengths(" 128k , 512,512") == [512, 131072]
    assert parse_size("1m") == 1 << 20
    assert parse_lengths(None, [7]) == [7]
    assert parse_lengths("1k..8k,100") == [100, 1024, 2048, 4096, 8192]
    for bad in ("abc", "0", "1k,-2", "1.5k", ",", "4g", "8k..1k", "1k..x"):
        with pytest.raises(ValueError):
            parse_lengths(bad)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--lengths", "1k,zz"], "bad size"),
        (["--mixers", "gka,nope"], "unknown mixer 'nope'"),
        (["--modes", "fwd,sideways"], "unknown mode 'sideways'"),
        (["--level", "kernel"], "unknown level"),
        (["--preset", "fair"], "unknown preset"),
        (["--dtype", "int8"], "unknown dtype"),
    ],
)
def test_cli_user_errors_are_one_liners(args, msg, tmp_path):
    from gkabench.cli import app

    res = CliRunner().invoke(app, ["speed", "--device", "cpu", "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert msg in res.output and "Traceback" not in res.output


def test_cli_speed_runs(tmp_path):
    from gkabench.cli import app

    res = CliRunner().invoke(app, ["speed", "--device", "cpu", "--out", str(tmp_path), "--mixers", "gla,mamba2",
                                   "--level", "op", "--modes", "fwd,decode", "--lengths", "8", "--tokens", "16",
                                   "--heads", "1", "--head-dim", "8", "--rep-ms", "1", "--decode-batches", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "CPU numbers" in res.output and "wrote" in res.output
    assert len(list(tmp_path.glob("*-cpu-matched.*"))) == 4


@pytest.mark.parametrize("name", ["gka", "gated_deltanet", "gla", "mamba2", "mesanet", "attention"])
def test_op_decode_step_continues_the_prefill(name):
    """prefill(T) + step(token T+1), with the state tiled to more sequences, equals forward(T + 1) at the last token."""
    from gkabench.bench import ops

    dims = ops.OpDims(2, 8, 8)
    full = ops.make_inputs(name, 1, 6, dims, torch.float64, CPU, seed=3)
    head = {k: (v[:, :5] if v.ndim >= 3 else v) for k, v in full.items()}
    last = {k: (v[:, 5:].repeat(3, *[1] * (v.ndim - 1)) if v.ndim >= 3 else v) for k, v in full.items()}
    with torch.no_grad():
        o_full, _ = ops.forward(name, full, final_state=False, num_iter=40)
        _, state = ops.forward(name, head, final_state=True, num_iter=40)
        state = ops.tile_state(name, state, 3, 5)
        o_step, _ = ops.step(name, last, state, num_iter=40)
    assert o_step.shape == (3, 1, 2, 8)
    for b in range(3):
        torch.testing.assert_close(o_step[b, 0], o_full[0, 5], rtol=1e-6, atol=1e-8)


def test_cuda_context_crash_stops_the_sweep(tmp_path, monkeypatch):
    from gkabench.bench import ops

    real = ops.forward

    def crash(name, inp, **kw):
        if name == "gla":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(name, inp, **kw)

    monkeypatch.setattr(ops, "forward", crash)
    res = run_speed(tiny(modes="fwd"), CPU, tmp_path)
    st = [(r["mixer"], r["T"], r["status"].split(":")[0]) for r in jsonl_rows(res)]
    assert st == [("gka", 4, "ok"), ("gka", 8, "ok"), ("gla", 4, "crash")]
    assert "--resume" in res.incomplete and not res.interrupted
    monkeypatch.setattr(ops, "forward", real)
    res = run_speed(tiny(modes="fwd"), CPU, tmp_path, resume=True)  # goes on after the crashed cell
    assert [r["status"].split(":")[0] for r in jsonl_rows(res)][3:] == ["ok", "ok", "ok"]


# The CUDA branch of gkabench.bench.ops (fla's chunk / fused-recurrent / one-step kernels) run on CPU tensors in
# Triton's interpreter, against the reference branch on the same inputs: checks the call signatures, argument
# layouts and state formats the GPU sweep relies on. Shims: autotuning without a GPU (configs "timed" in a fixed
# order) and kernel loop indices as Triton tensors (fla calls .to() on them).
_FLA_INTERPRET = r"""
import builtins, json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import torch
import triton.language as tl
import triton.runtime.autotuner as at
from triton.runtime.interpreter import TensorHandle

at.Autotuner._bench = lambda self, *a, config=None, **k: [float(len(self.configs) - self.configs.index(config))] * 3
import fla.ops.gated_delta_rule, fla.ops.gla, fla.ops.simple_gla, fla.ops.mesa_net  # noqa: E401
kernels = set()

def _range(*args):
    vals = [int(np.asarray(a.handle.data).reshape(-1)[0]) if isinstance(a, tl.tensor) else int(a) for a in args]
    if sys._getframe(1).f_code.co_name not in kernels:
        return builtins.range(*vals)
    return (tl.tensor(TensorHandle(np.array(i, dtype=np.int32), tl.int32), tl.int32) for i in builtins.range(*vals))

for m in list(sys.modules.values()):
    if getattr(m, "__name__", "").startswith("fla."):
        hit = False
        for v in list(vars(m).values()):
            fn = v
            while hasattr(fn, "fn"):
                fn = fn.fn
            if fn is not v and hasattr(fn, "__code__"):
                kernels.add(fn.__code__.co_name)
                hit = True
        if hit:
            m.range = _range

from gkabench.bench import ops
rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
flat = lambda s: [t for t in (s if isinstance(s, tuple) else (s,)) if t is not None]
out = {}
for name in ("gated_deltanet", "gla", "mamba2", "mesanet"):
    T = 20  # one chunk: fla's MesaNet kernel is interpretable on one chunk only
    dims = ops.OpDims(1, 16, 16)
    full = ops.make_inputs(name, 1, T, dims, torch.float32, "cpu", seed=1)
    last = {k: (v[:, -1:].repeat(2, *[1] * (v.ndim - 1)) if v.ndim >= 3 else v) for k, v in full.items()}
    res = {}
    for fast in (True, False):
        ops.FORCE_FAST = fast
        with torch.no_grad():
            o, st = ops.forward(name, full, final_state=True)
            st = ops.tile_state(name, st, 2, T)
            o1, st1 = ops.step(name, last, st)
        res[fast] = [o, *flat(st), o1, *flat(st1)]
    out[name] = max(rel(a, b) for a, b in zip(res[True], res[False]))
print("RESULT " + json.dumps(out))
print(out, file=sys.stderr)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the sweep runs the real kernels")
def test_cuda_branch_of_ops_under_triton_interpreter():
    import os
    import subprocess
    import sys

    pytest.importorskip("fla")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _FLA_INTERPRET], capture_output=True, text=True, env=env, timeout=300, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    errors = json.loads(line[0][len("RESULT ") :])
    assert set(errors) == {"gated_deltanet", "gla", "mamba2", "mesanet"}
    for name, err in errors.items():  # MesaNet's kernels round q, k to fp16 and start decode CG from a Jacobi guess
        assert err < (5e-3 if name == "mesanet" else 1e-4), (name, err)


def test_decode_table_shows_graph_replay_next_to_eager_and_why_not():
    """Report formatting of the CUDA-graph decode figure (rows as a GPU sweep writes them; no GPU needed)."""
    from gkabench.bench.report import tables

    base = {"level": "layer", "mode": "decode", "T": 2048, "status": "ok", "state_bytes": 1, "peak_bytes": 1}
    rows = [
        {**base, "mixer": "gka", "decode_batch": 1, "us_per_step": 1148.0, "tokens_per_s": 871.0, "graph_us_per_step": 212.4},
        {**base, "mixer": "attention", "decode_batch": 1, "us_per_step": 850.0, "tokens_per_s": 1176.0,
         "graph_status": "RuntimeError: operation not permitted when stream is capturing"},
    ]
    (tab,) = tables(rows)
    assert "CUDA graph" in tab["unit"]
    cells = {r[0]: r[2] for r in tab["rows"]}
    assert cells == {"gka": "1148 / 212", "attention": "850 / -"}
    assert any("attention 2k b1: RuntimeError" in n for n in tab["notes"])
