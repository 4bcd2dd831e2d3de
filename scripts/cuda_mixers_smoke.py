"""Every registered mixer on CUDA: the Triton path against the reference path of the same layer (same weights,
same input, float32), parameter gradients included, cached decoding against the full forward, and a bf16
forward+backward at fla's default sizes. Prints one table; run on the device by scripts/device_check.sh.

fla's gated backward refuses to run on Hopper with Triton < 3.7.1; such a case is recorded as refused, then
retried with the guard lifted (marked so) to see whether the result is right at these shapes.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from gkabench.layers import build_mixer, mixer_names


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def param_grads(m):
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def run_one(name: str, lifted: bool) -> dict:
    row = {"mixer": name, "guard_lifted": lifted}
    torch.manual_seed(0)
    m = build_mixer(name, 512, 4, 64).cuda().float()
    x = torch.randn(2, 200, 512, device="cuda")
    # reference path
    m.backend = "reference"
    m.zero_grad()
    t0 = time.perf_counter()
    y_ref, _ = m(x)
    y_ref.square().mean().backward()
    row["ref_s"] = time.perf_counter() - t0
    g_ref = param_grads(m)
    # Triton path
    m.backend = "triton"
    m.zero_grad()
    y_tri, _ = m(x)
    row["fwd_rel"] = rel(y_tri, y_ref)
    y_tri.square().mean().backward()
    g_tri = param_grads(m)
    row["grad_rel_max"] = max(rel(g_tri[n], g_ref[n]) for n in g_ref)
    row["grad_worst"] = max(g_ref, key=lambda n: rel(g_tri[n], g_ref[n]))
    # cached decoding on CUDA (auto backend): prefill 184 tokens, then 16 steps
    m.backend = "auto"
    with torch.no_grad():
        y_full, _ = m(x)
        y_pre, cache = m(x[:, :184], use_cache=True)
        steps = []
        for t in range(184, 200):
            y_t, cache = m(x[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(y_t)
        row["decode_rel"] = rel(torch.cat([y_pre, *steps], 1), y_full)
    # bf16 at the mixer's default (fla) sizes, hidden 2048, 2 x 1024 tokens
    torch.manual_seed(0)
    mb = build_mixer(name, 2048).cuda().bfloat16()
    xb = torch.randn(2, 1024, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    yb, _ = mb(xb)
    yb.float().square().mean().backward()
    row["bf16_finite"] = bool(torch.isfinite(yb).all() and torch.isfinite(xb.grad).all())
    return row


def main() -> int:
    from gkabench.kernels.parallel_compile import enable_on_cuda

    enable_on_cuda()
    out = os.environ.get("OUT", ".")
    rows = []
    names = [n for n in mixer_names() if n != "gka"] + ["gka"]  # GKA last: its kernels compile longest
    if len(sys.argv) > 1:  # a subset, e.g. `cuda_mixers_smoke.py gla mamba2`
        names = sys.argv[1:]
    # a stack dump before an outer `timeout` kills a step that is stuck (compiling or hung)
    if os.environ.get("SMOKE_DUMP_S"):
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["SMOKE_DUMP_S"]), exit=False)
    for name in names:
        n_before = len(rows)
        try:
            rows.append(run_one(name, lifted=False))
        except RuntimeError as exc:
            if "3.7.1" not in str(exc):
                rows.append({"mixer": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            rows.append({"mixer": name, "refused": "fla gated backward guard (Triton < 3.7.1 on Hopper)"})
            from gkabench.layers.fla_guard import lift_fla_hopper_guard

            lift_fla_hopper_guard()
            try:
                rows.append(run_one(name, lifted=True))
            except Exception as exc2:  # noqa: BLE001
                rows.append({"mixer": name, "guard_lifted": True, "error": f"{type(exc2).__name__}: {str(exc2)[:200]}"})
        except Exception as exc:  # noqa: BLE001
            rows.append({"mixer": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        for r in rows[n_before:]:
            print("ROW", json.dumps(r), flush=True)
    with open(os.path.join(out, f"cuda_mixers{'-' + '-'.join(sys.argv[1:]) if len(sys.argv) > 1 else ''}.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"{'mixer':16s} {'lifted':6s} {'fwd rel':>9s} {'grad rel':>9s} {'decode':>9s} {'bf16 ok':>7s}  note")
    for r in rows:
        if "fwd_rel" in r:
            print(f"{r['mixer']:16s} {str(r['guard_lifted']):6s} {r['fwd_rel']:9.2e} {r['grad_rel_max']:9.2e} {r['decode_rel']:9.2e} {str(r['bf16_finite']):>7s}  worst grad: {r['grad_worst']}")
        else:
            print(f"{r['mixer']:16s} {r.get('refused') or r.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
