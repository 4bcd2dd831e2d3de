"""MesaNet (von Oswald et al., "MesaNet: Sequence Modeling by Locally Optimal Test-Time Training",
arXiv 2506.05233), written on our blocks; the op is fla's ``chunk_mesa_net`` on CUDA and
:func:`gkabench.kernels.baselines.reference.chunk_mesa_net` on CPU (``solver="exact"``:
:func:`~gkabench.kernels.baselines.reference.mesa_net_exact`, reference backend only).

Layer (defaults from fla 0.6.0 ``fla/layers/mesa_net.py``)::

    q, k  = SiLU(conv4(Wq x)), SiLU(conv4(Wk x)) ;  v = Wv x           (no conv on v)
    q, k  = L2-normalise per head
    beta  = sigmoid(Wb x + bb) ;  g = logsigmoid(Wa x + ba)           one scalar per token and head
    lamb  = softplus(lambda_params) + 0.25                            [H, K], initialised to 1
    H_kk  = exp(g) H_kk + beta k k^T ;  H_kv = exp(g) H_kv + beta k v^T
    o     = H_kv^T (H_kk + diag(lamb))^{-1} q                         30 conjugate-gradient steps, no scale
    y     = Wo RMSNorm(o)                                             per head, eps 1e-5 (no output gate)

Defaults: fla uses 16 heads of 128 at hidden 2048 (``num_heads * head_dim = hidden``, value dim = key dim).
Scaled to any hidden size we keep head_dim = 128 (fewer when the width is smaller) and
``num_heads = round(hidden / head_dim)``. State per sequence: two ``H K K`` fp32 matrices plus the conv states
of q and k.

Decoding on CUDA (one token, cache given, no autograd) uses fla's ``mesa_net_decoding_one_step`` (as fla's
layer does). Its CG starts from the Jacobi guess ``q / (diag H + lamb)`` while the chunk kernel starts from 0,
so after ``max_cg_step_decoding`` steps the two agree to the CG tolerance, not bit for bit. The reference
backend uses one CG (from 0) everywhere, so there a prefill plus steps equals a full forward exactly when
``max_cg_step_training == max_cg_step_decoding``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerCache
from .blocks import (
    compute_dtype,
    l2_normalize,
    mask_tokens,
    resolve_heads,
    take_options,
)
from .registry import register_mixer

DEFAULTS = {
    "head_dim": 128,
    "num_heads": "round(hidden_size / head_dim)",
    "use_output_gate": False,
    "conv_size": 4,
    "norm_eps": 1e-5,
    "lambda_lower_bound": 0.25,
    "lambda_initial_value": 1.0,
    "max_cg_step_training": 30,
    "max_cg_step_decoding": 30,
    "solver": "cg",
}
_OPTIONS = {k: v for k, v in DEFAULTS.items() if k not in ("head_dim", "num_heads")}


def _known_issues() -> list[str]:
    if not torch.cuda.is_available():
        return []
    # A fact of fla 0.6.0's kernel rather than a version guard, but it bounds the accuracy a check can expect.
    return ["mesanet: fla's chunk_mesa_net rounds the L2-normalised q, k to float16 and keeps the per-chunk "
            "H_kv states in bfloat16 inside the kernel, whatever the input dtype (expect ~1e-3 agreement, not fp32's)"]


@register_mixer(
    "mesanet",
    summary="MesaNet: per-token ridge-regression readout (H_kk + diag(lamb))^-1 q solved by conjugate gradient",
    cuda_op="fla.ops.mesa_net.chunk_mesa_net (decode: mesa_net_decoding_one_step)",
    cpu_op="gkabench.kernels.baselines.reference.chunk_mesa_net",
    defaults=DEFAULTS,
    known_issues=_known_issues,
)
class MesaNetMixer(Mixer):
    """MesaNet token mixer. ``x [B, T, hidden]`` -> ``y [B, T, hidden]``; see the module docstring.

    Options: ``use_output_gate``, ``conv_size``, ``norm_eps``, ``lambda_lower_bound``, ``lambda_initial_value``,
    ``max_cg_step_training`` (CG steps of full forwards / prefill), ``max_cg_step_decoding`` (one-token steps
    with a cache), ``solver`` (``"cg"``, or ``"exact"`` = torch.linalg.solve, reference backend only).
    Cache tensors: ``conv_q``, ``conv_k [B, C, conv_size - 1]``, ``h_kk [B, H, K, K]``, ``h_kv [B, H, K, K]``.
    """

    def __init__(self, hidden_size, num_heads=None, head_dim=None, *, backend="auto", layer_idx=None, **layer_options):
        opts = take_options("mesanet", layer_options, _OPTIONS)
        num_heads, head_dim = resolve_heads("mesanet", hidden_size, num_heads, head_dim, 128)
        super().__init__(hidden_size, num_heads, head_dim, backend=backend, layer_idx=layer_idx)
        if opts["solver"] not in ("cg", "exact"):
            raise ValueError(f"mesanet: solver must be 'cg' or 'exact', got {opts['solver']!r}")
        self.options = opts
        self.key_dim = num_heads * head_dim
        self.conv_size = int(opts["conv_size"])
        self.use_output_gate = bool(opts["use_output_gate"])
        self.lambda_lower_bound = float(opts["lambda_lower_bound"])
        init = float(opts["lambda_initial_value"]) - self.lambda_lower_bound
        if init <= 0:
            raise ValueError("mesanet: lambda_initial_value must exceed lambda_lower_bound")

        self.add_qkv(self.key_dim, self.key_dim, self.conv_size, conv_v=False)  # fla's MesaNet: no conv on v
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=True)
        # softplus(lambda_params) + lower bound = lambda_initial_value at init
        self.lambda_params = nn.Parameter(torch.full((self.key_dim,), math.log(math.expm1(init))))
        self.add_output(self.key_dim, head_dim, self.use_output_gate, float(opts["norm_eps"]))

    def state_bytes(self, seq_len: int = 0, dtype: torch.dtype = torch.bfloat16) -> int:
        """Two fp32 ``H K K`` states plus the q and k conv states in ``dtype``."""
        return 2 * self.num_heads * self.head_dim**2 * 4 + 2 * self.key_dim * (self.conv_size - 1) * torch.finfo(dtype).bits // 8

    def forward(self, x, attention_mask=None, cu_seqlens=None, cache: MixerCache | None = None, use_cache=False):
        ctx = self.start(x, attention_mask, cu_seqlens, cache, use_cache)
        if ctx.backend == "triton" and self.options["solver"] != "cg":
            raise ValueError("mesanet: solver='exact' exists only on the reference backend; use solver='cg' on CUDA")
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        cdt = compute_dtype(x)

        q, k = ctx.conv(self.q_conv, self.q_proj(x), "conv_q"), ctx.conv(self.k_conv, self.k_proj(x), "conv_k")
        q = l2_normalize(q.view(B, T, H, K))
        # Padded tokens: k = v = 0, beta = 0 and g = 0 leave both states exactly as they were.
        k = mask_tokens(l2_normalize(k.view(B, T, H, K)), ctx.mask)
        v = mask_tokens(self.v_proj(x).view(B, T, H, K), ctx.mask)
        beta = mask_tokens(torch.sigmoid(self.b_proj(x).to(cdt)), ctx.mask)
        g = mask_tokens(F.logsigmoid(self.a_proj(x).to(cdt)), ctx.mask)
        lamb = (F.softplus(self.lambda_params.to(cdt)) + self.lambda_lower_bound).view(H, K)

        o, h_kk, h_kv = self._op(ctx.backend, q, k, v, g, beta, lamb, ctx.cached("h_kk"), ctx.cached("h_kv"), use_cache,
                                 cu_seqlens, ctx.decoding and T == 1)  # fmt: skip
        return ctx.finish(self.gated_output(o, x), h_kk=h_kk, h_kv=h_kv)

    def _op(self, backend, q, k, v, g, beta, lamb, kk0, kv0, use_cache, cu_seqlens, decode):
        steps = int(self.options["max_cg_step_decoding"] if decode else self.options["max_cg_step_training"])
        if backend == "reference":
            from gkabench.kernels.baselines.reference import chunk_mesa_net, mesa_net_exact

            op = mesa_net_exact if self.options["solver"] == "exact" else chunk_mesa_net
            return op(q, k, v, g, beta, lamb, h_kk_init=kk0, h_kv_init=kv0, output_final_state=use_cache,
                      max_CG_iteration=steps, cu_seqlens=cu_seqlens)  # fmt: skip
        # fla's public ops: natural-log g, fp32 g / beta / lamb / states (asserted by chunk_mesa_net).
        g, beta, lamb = g.float(), beta.float(), lamb.float()
        kk0 = kk0.float() if kk0 is not None else None
        kv0 = kv0.float() if kv0 is not None else None
        if decode and kk0 is not None and not torch.is_grad_enabled():
            from fla.ops.mesa_net import mesa_net_decoding_one_step

            o, h_kk, h_kv = mesa_net_decoding_one_step(
                q=q[:, 0], k=k[:, 0], v=v[:, 0], g=g[:, 0], lamb=lamb, beta=beta[:, 0], prev_h_kk=kk0, prev_h_kv=kv0,
                max_CG_iteration=steps,
            )  # fmt: skip
            return o.unsqueeze(1).to(v.dtype), h_kk, h_kv
        from fla.ops.mesa_net import chunk_mesa_net

        o, h_kk, h_kv = chunk_mesa_net(q, k, v, g, beta, lamb, h_kk_init=kk0, h_kv_init=kv0, output_final_state=use_cache,
                                       max_CG_iteration=steps, use_qk_l2norm_in_kernel=False, cu_seqlens=cu_seqlens)  # fmt: skip
        return o, h_kk, h_kv
