"""mHC-lite: N parallel residual streams with learned read, write and doubly stochastic mixing (seed-spec §2.2-2.3).

Streams are held as one tensor X [N, B, T, dim] (stream first). Per sub-layer (`mhc_attn`, `mhc_ffn`):
- expand(x):  every stream starts as a copy of x (done once, after the embedding).
- prepare(X): sum_i h_pre[i] * X[i],  h_pre = sigmoid(pre_logits + pre_bias)      -> the sub-layer input.
- apply(X, o): X[i] += h_post[i] * o,  h_post = 2*sigmoid(post_logits + post_bias), THEN mix the streams with a
  doubly stochastic matrix: N=2 uses [[a, 1-a], [1-a, a]] with a = sigmoid(alpha_logit) (residual before mixing,
  seed fix 95be2f9); N>2 uses a Sinkhorn-normalised exp(mix_logits).
- collapse(X): the mean of the streams (before the final norm).
Two forms of prepare/apply, same maths (a test checks value and gradient agree in fp64):
- "matmul": matrix products over the flattened streams ([N, B*T*dim]). Eager mode runs it with fewer passes over
  the streams than broadcasting (2-core CPU, one fp32 block forward+backward at [2, 16, 256, 256]: 21.9 vs
  43.9 ms), and its gain gradients are matrix products. Compiled for an H200 (torch 2.11, B=16, T=1024) it took the
  step from 639 to 207 ms, but cuBLAS still runs these K<=2 products far below memory bandwidth (in 16-17 fp32
  SIMT launches each, by the profile's counts): ~115 ms of the 207 ms step.
- "pointwise": broadcast products and sums, which Inductor fuses with the neighbouring norm and elementwise ops. The
  gains are first expanded to one copy per row ([N, B, T, 1]; the mix to [N, N, B, T, 1]), so that the backward
  computes their gradients in two stages: a per-row reduction over dim (the shape Inductor fuses well with the
  RMSNorm backward), then a sum over the rows. Written as plain broadcasts (no per-row stage), Inductor fused
  the whole B*T*dim reduction into the RMSNorm backward: ~7 ms kernels, 639 ms per step on the H200. On the CPU
  the per-row stage made the compiled tiny training step 1.45x faster than the plain broadcasts (one thread,
  baseline-v1, B=16, T=256: 2.03 and 1.96 s against 3.06 and 2.81 s per step, alternating runs).
`MHCLite.form` picks one: "auto" (default) uses "pointwise" when torch.compile traces for the CPU or traces without
autograd (decoding: no gain gradients, and the pointwise ops fuse, so a decode step launches fewer kernels), and
"matmul" otherwise: eager mode, and compiled training on a GPU, the only form measured there so far
(benchmarks/gpu_check.sh times both). `set_mhc_form(model, form)` sets it for a whole model.
N=1 is a plain residual stream: prepare is the identity and apply is x + o (no parameters).

Initialisation (`mhc_init`):
- "seed": the original, fully symmetric init (alpha_logit 0, pre/post logits 0, biases 0.5). Both streams stay
  bit-identical forever, so d loss / d alpha_logit is exactly 0 and mHC reduces to a scalar residual gain.
- "broken" (default): the per-stream logits start at distinct values, pre_logits = post_logits = linspace(+0.5,
  -0.5) over the streams, and alpha_logit = 1 (a = 0.73). Distinct write gains h_post make the streams differ after
  the first sub-layer, the mix no longer averages them away (a != 0.5), and distinct read gains h_pre make the two
  streams' gradients differ, so alpha_logit receives a gradient from the first step. Biases keep the seed's 0.5.
  For N>2, mix_logits start at 1 on the diagonal (mostly keep your own stream) instead of the seed-like zeros.
The mix of the model's very last sub-layer is structurally inert: collapse takes the stream mean, and a doubly
stochastic mix preserves it, so that one alpha_logit never gets a gradient (in the seed too).
`clamp_()` is the seed's post-step clamp of the mixing logits to [-3, 3] (in place, no host sync).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

MIX_CLAMP = 3.0
SINKHORN_ITERS = 20


def expand_streams(x: torch.Tensor, n_streams: int) -> torch.Tensor:
    """x [B, T, dim] -> X [N, B, T, dim] with N identical copies."""
    return x.unsqueeze(0).expand(n_streams, *x.shape).contiguous()


def collapse_streams(streams: torch.Tensor) -> torch.Tensor:
    """X [N, B, T, dim] -> the mean stream [B, T, dim]."""
    return streams.mean(dim=0)


def sinkhorn(logits: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """A (numerically) doubly stochastic matrix from exp(logits) by alternate row/column normalisation in log space."""
    log_m = logits
    for _ in range(iters):
        log_m = log_m - log_m.logsumexp(dim=1, keepdim=True)
        log_m = log_m - log_m.logsumexp(dim=0, keepdim=True)
    return log_m.exp()


MHC_FORMS = ("auto", "matmul", "pointwise")


def _pointwise(form: str, streams: torch.Tensor) -> bool:
    """Whether prepare/apply run in the pointwise form (see the module docstring for when "auto" picks it)."""
    if form != "auto":
        return form == "pointwise"
    if not torch.compiler.is_compiling():
        return False
    return streams.device.type == "cpu" or not torch.is_grad_enabled()


def _per_row(gains: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """Gains [..., N] -> [..., N, B, T, 1]: one copy per row, so their gradient is first reduced row by row."""
    return gains.view(*gains.shape, 1, 1, 1).expand(*gains.shape, *streams.shape[1:-1], 1)


def set_mhc_form(model: nn.Module, form: str) -> None:
    """Set `form` ("auto", "matmul" or "pointwise") on every mHC module of `model`."""
    if form not in MHC_FORMS:
        raise ValueError(f"mHC form must be one of {', '.join(MHC_FORMS)}, got {form!r}")
    for m in model.modules():
        if isinstance(m, MHCLite):
            m.form = form


def _no_autocast(t: torch.Tensor):
    """The stream arithmetic stays in the streams' dtype (fp32) even inside a bf16 autocast region."""
    if t.device.type not in ("cpu", "cuda"):  # meta tensors (shape checks) have no autocast
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


class MHCLite(nn.Module):
    """Read/write/mix gains of one sub-layer over N residual streams (see the module docstring)."""

    def __init__(self, n_streams: int, init: str = "broken") -> None:
        super().__init__()
        if init not in ("broken", "seed"):
            raise ValueError(f"mhc_init must be 'broken' or 'seed', got {init!r}")
        self.n_streams = n_streams
        self.form = "auto"
        if n_streams == 1:
            return
        spread = 0.5 if init == "broken" else 0.0
        logits = torch.linspace(spread, -spread, n_streams)
        self.pre_logits = nn.Parameter(logits.clone())
        self.pre_bias = nn.Parameter(torch.full((n_streams,), 0.5))
        self.post_logits = nn.Parameter(logits.clone())
        self.post_bias = nn.Parameter(torch.full((n_streams,), 0.5))
        if n_streams == 2:
            self.alpha_logit = nn.Parameter(torch.full((1,), 1.0 if init == "broken" else 0.0))
        else:
            self.mix_logits = nn.Parameter(torch.eye(n_streams) * (1.0 if init == "broken" else 0.0))

    def mixing_matrix(self) -> torch.Tensor:
        """The doubly stochastic [N, N] matrix applied after the residual write."""
        if self.n_streams == 2:
            a = torch.sigmoid(self.alpha_logit[0])
            return torch.stack((torch.stack((a, 1 - a)), torch.stack((1 - a, a))))
        return sinkhorn(self.mix_logits)

    def prepare(self, streams: torch.Tensor) -> torch.Tensor:
        """X [N, B, T, dim] -> the sub-layer input [B, T, dim]: sum_i h_pre[i] X[i]."""
        if self.n_streams == 1:
            return streams[0]
        h_pre = torch.sigmoid(self.pre_logits + self.pre_bias).to(streams.dtype)
        if _pointwise(self.form, streams):
            return (_per_row(h_pre, streams) * streams).sum(dim=0)
        with _no_autocast(streams):
            return torch.mm(h_pre.view(1, -1), streams.view(self.n_streams, -1)).view(streams.shape[1:])

    def apply(self, streams: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add h_post[i]*out to stream i, then mix: M (X + h_post out^T) = M X + (M h_post) out^T."""
        if self.n_streams == 1:
            return streams + out.unsqueeze(0)
        n = self.n_streams
        h_post = (2 * torch.sigmoid(self.post_logits + self.post_bias)).to(streams.dtype)
        with _no_autocast(streams):
            mix = self.mixing_matrix().to(streams.dtype)
            if _pointwise(self.form, streams):
                written = streams + _per_row(h_post, streams) * out.unsqueeze(0)
                return (_per_row(mix, streams) * written.unsqueeze(0)).sum(dim=1)
            gain = (mix @ h_post).view(n, 1)
            mixed = torch.addmm(torch.mm(mix, streams.view(n, -1)), gain, out.reshape(1, -1).to(streams.dtype))
        return mixed.view(streams.shape)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the mixing logits to [-3, 3] in place; non-finite values are reset to 0 (seed behaviour)."""
        if self.n_streams == 1:
            return
        p = self.alpha_logit if self.n_streams == 2 else self.mix_logits
        torch.nan_to_num_(p, nan=0.0, posinf=0.0, neginf=0.0)
        p.clamp_(-MIX_CLAMP, MIX_CLAMP)
