"""mHC-lite: N parallel residual streams with learned read, write and doubly stochastic mixing (docs/original-runs.md).

The maths, per sub-layer (`mhc_attn`, `mhc_ffn`), on streams X_0..X_{N-1} (each [B, T, dim]):
- expand(x):  every stream starts as a copy of x (once, after the embedding).
- prepare(X): sum_i h_pre[i] * X_i,  h_pre = sigmoid(pre_logits + pre_bias)      -> the sub-layer input.
- apply(X, o): X_i += h_post[i] * o,  h_post = 2*sigmoid(post_logits + post_bias), THEN mix the streams with a
  doubly stochastic matrix M: N=2 uses [[a, 1-a], [1-a, a]] with a = sigmoid(alpha_logit) (residual before mixing,
  seed fix 95be2f9); N>2 uses a Sinkhorn-normalised exp(mix_logits).
- collapse(X): the mean of the streams (before the final norm).

How the streams are held (`Streams`, a tuple of [B, T, dim] tensors; `to_original`/`from_original` convert):
- N=1: (x,), a plain residual stream: prepare is the identity and apply is x + o (no parameters).
- N=2 (every recipe): (P, Q) with P = (X_0 + X_1)/2 and Q = (X_0 - X_1)/2. The 2x2 mix is diagonal in this basis:
  it keeps P (M is doubly stochastic, so the mean is preserved) and scales Q by c = 2a - 1. So
      prepare = (h0 + h1) P + (h0 - h1) Q
      apply:    P' = P + g_p o,   Q' = c Q + g_q o,   g_p = (h0' + h1')/2,  g_q = c (h0' - h1')/2
  (h = h_pre, h' = h_post), expand is (x, 0) and collapse is P (see `collapse_streams`). Same maths as the
  stream basis, but every step is a scalar multiply-add: no 2x2 products over [2, B*T*dim] and no cross-stream
  reads in apply, so compiled code fuses P's and Q's updates separately. In the stream basis ([N, B, T, dim]
  stacked) the mix is a 2x2 matrix product over B*T*dim, which a GPU runs as slow K<=2 cuBLAS kernels; the step
  times of both forms are in benchmarks/results/ (2026-11-26).
- N>2: (X_0, ..., X_{N-1}) in the stream basis, mixed by pointwise sums over the N x N matrix.

Two forms of the same arithmetic, `MHCLite.form` (a test checks value and gradients agree in fp64):
- "plain": the gains are 0-dim tensors (`addcmul` in apply and prepare: one kernel for P', two for Q').
- "per-row": the gains are expanded to one copy per row ([B, T, 1]) before they multiply, so the backward
  computes each gain's gradient in two stages: a per-row reduction over dim (the shape Inductor fuses well with
  the RMSNorm backward next to it) and then a sum over the rows. With plain broadcasts Inductor can fuse the
  whole B*T*dim reduction into the RMSNorm backward as one reduction it does not split, which is slow on a GPU.
"auto" (default) uses "per-row" while torch.compile traces with autograd on (training, on any device, so the CPU
tests run the form compiled GPU training uses) and "plain" otherwise (eager, and compiled decoding).
`set_mhc_form(model, form)` sets it for a whole model.

The 0-dim gains come from the parameters through ~18 tiny ops per sub-layer (sigmoids, sums, differences). Inside
`frozen_gains(model)` (part of `nanotrain.model.frozen.frozen_weights`, which inference runs in) they are computed
once on entry and reused by every call: the same values, so the same outputs bit for bit, and ~18 fewer kernel
launches per sub-layer and step. There, N=2's prepare and apply also take a shorter Python path to the same
"plain" ops (eager decoding is bound by the host's time per op). Compiled code computes the gains in its graph,
where they fuse.

Initialisation (`mhc_init`):
- "seed": the original, fully symmetric init (alpha_logit 0, pre/post logits 0, biases 0.5). Both streams stay
  bit-identical forever (Q stays exactly 0), so d loss / d alpha_logit is exactly 0 and mHC reduces to a scalar
  residual gain.
- "broken" (default): the per-stream logits start at distinct values, pre_logits = post_logits = linspace(+0.5,
  -0.5) over the streams, and alpha_logit = 1 (a = 0.73). Distinct write gains h_post make the streams differ after
  the first sub-layer, the mix no longer averages them away (a != 0.5), and distinct read gains h_pre make the two
  streams' gradients differ, so alpha_logit receives a gradient from the first step. Biases keep the seed's 0.5.
  For N>2, mix_logits start at 1 on the diagonal (mostly keep your own stream) instead of the seed-like zeros.
The mix of the model's very last sub-layer is structurally inert: collapse takes the stream mean, and a doubly
stochastic mix preserves it, so that one alpha_logit only ever gets an exact zero gradient (in the seed too).
`clamp_mixing_logits_` is the seed's post-step clamp of the mixing logits to [-3, 3] (in place, no host sync;
`GPT.after_optimizer_step` applies it to every module's `mixing_logits()`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from nanotrain.flat import FlatMirror

MIX_CLAMP = 3.0
SINKHORN_ITERS = 20

Streams = tuple[torch.Tensor, ...]


def expand_streams(x: torch.Tensor, n_streams: int) -> Streams:
    """x [B, T, dim] -> N streams that are all x: (x, 0) in the (P, Q) basis for N=2, else N references to x."""
    if n_streams == 2:
        return x, torch.zeros_like(x)
    return (x,) * n_streams


def collapse_streams(streams: Streams) -> torch.Tensor:
    """The mean stream [B, T, dim]: P for N=2.

    For N=2 it returns P + 0*Q, which is P, NaN or inf in Q aside (the stream mean (X_0 + X_1)/2 is NaN there
    too). The zero term keeps Q, and so the last sub-layer's alpha_logit, in the autograd graph. That alpha gets
    an exact zero gradient, as in the stream basis, rather than none, so DDP does not see an unused parameter.
    """
    if len(streams) == 1:
        return streams[0]
    if len(streams) == 2:
        return streams[0] + streams[1] * 0
    return sum(streams[1:], streams[0]) / len(streams)


def to_original(streams: Streams) -> torch.Tensor:
    """The streams X [N, B, T, dim] in the seed's basis (for tests and inspection; training never needs it)."""
    if len(streams) == 2:
        p, q = streams
        return torch.stack((p + q, p - q))
    return torch.stack(streams)


def from_original(x: torch.Tensor) -> Streams:
    """The inverse of `to_original`: X [N, B, T, dim] -> streams."""
    if x.shape[0] == 2:
        return (x[0] + x[1]) / 2, (x[0] - x[1]) / 2
    return tuple(x.unbind(0))


def sinkhorn(logits: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """A (numerically) doubly stochastic matrix from exp(logits) by alternate row/column normalisation in log space."""
    log_m = logits
    for _ in range(iters):
        log_m = log_m - log_m.logsumexp(dim=1, keepdim=True)
        log_m = log_m - log_m.logsumexp(dim=0, keepdim=True)
    return log_m.exp()


MHC_FORMS = ("auto", "plain", "per-row")


def _per_row(form: str) -> bool:
    """Whether prepare/apply expand their gains per row (see the module docstring for when "auto" does)."""
    if form != "auto":
        return form == "per-row"
    return torch.compiler.is_compiling() and torch.is_grad_enabled()


def _rows(gain: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim gain -> [B, T, 1], one copy per row of `like` [B, T, dim]."""
    return gain.view([1] * like.dim()).expand(*like.shape[:-1], 1)


def set_mhc_form(model: nn.Module, form: str) -> None:
    """Set `form` ("auto", "plain" or "per-row") on every mHC module of `model`."""
    if form not in MHC_FORMS:
        raise ValueError(f"mHC form must be one of {', '.join(MHC_FORMS)}, got {form!r}")
    for m in model.modules():
        if isinstance(m, MHCLite):
            m.form = form


class MHCLite(nn.Module):
    """Read/write/mix gains of one sub-layer over N residual streams (see the module docstring)."""

    def __init__(self, n_streams: int, init: str = "broken") -> None:
        super().__init__()
        if init not in ("broken", "seed"):
            raise ValueError(f"mhc_init must be 'broken' or 'seed', got {init!r}")
        self.n_streams = n_streams
        self.form = "auto"
        self._frozen: tuple[torch.dtype, dict[str, tuple]] | None = None  # set by `frozen_gains`
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

    def prepare(self, streams: Streams) -> torch.Tensor:
        """Streams -> the sub-layer input [B, T, dim]: sum_i h_pre[i] X_i."""
        if self.n_streams == 1:
            return streams[0]
        if self.n_streams == 2 and self._frozen is not None and not torch.compiler.is_compiling():  # plain form
            (p, q), (a, b) = streams, self._scalars("read", streams[0].dtype)
            return torch.addcmul(p * a, q, b)
        return self._weighted_sum(self._scalars("read", streams[0].dtype), streams)

    def apply(self, streams: Streams, out: torch.Tensor) -> Streams:
        """Add h_post[i]*out to stream i, then mix (for N=2: P' = P + g_p out, Q' = c Q + g_q out)."""
        if self.n_streams == 1:
            return (streams[0] + out,)
        if self.n_streams == 2 and self._frozen is not None and not torch.compiler.is_compiling():
            (p, q), ((_, c), (g_p, g_q), _) = streams, self._scalars("write", streams[0].dtype)
            return torch.addcmul(p, out, g_p), torch.addcmul(q * c, out, g_q)  # the plain form, fewer steps
        scales, gains, mix_rows = self._scalars("write", streams[0].dtype)
        # N>2: X'_j = sum_i M[j, i] X_i + (M h_post)_j out, all pointwise
        mixed = streams if mix_rows is None else tuple(self._weighted_sum(row, streams) for row in mix_rows)
        if _per_row(self.form):
            like = streams[0]
            return tuple((s if k is None else _rows(k, like) * s) + _rows(g, like) * out
                         for s, k, g in zip(mixed, scales, gains))
        return tuple(torch.addcmul(s if k is None else s * k, out, g) for s, k, g in zip(mixed, scales, gains))

    def _read_weights(self, dtype: torch.dtype) -> tuple:
        """The 0-dim weights prepare multiplies the streams by: (h0 + h1, h0 - h1) for N=2, else h_pre."""
        h_pre = torch.sigmoid(self.pre_logits + self.pre_bias).to(dtype)
        if self.n_streams == 2:
            return h_pre[0] + h_pre[1], h_pre[0] - h_pre[1]
        return h_pre.unbind(0)

    def _write_terms(self, dtype: torch.dtype) -> tuple:
        """(scales, gains, mix_rows) of apply: stream i becomes scales[i]*mixed_i + gains[i]*out (scale None = 1),
        where mixed_i is stream i for N=2 (mix_rows None) and sum_j mix_rows[i][j] X_j for N>2."""
        h_post = (2 * torch.sigmoid(self.post_logits + self.post_bias)).to(dtype)
        if self.n_streams == 2:
            c = (2 * torch.sigmoid(self.alpha_logit[0]) - 1).to(dtype)
            return (None, c), ((h_post[0] + h_post[1]) / 2, c * (h_post[0] - h_post[1]) / 2), None
        mix = self.mixing_matrix().to(dtype)
        return ((None,) * self.n_streams, tuple((mix * h_post).sum(dim=1).unbind(0)),
                tuple(row.unbind(0) for row in mix))

    def _scalars(self, which: str, dtype: torch.dtype) -> tuple:
        """`_read_weights` ("read") or `_write_terms` ("write") in `dtype`: computed by this call, or the values
        computed on entry to `frozen_gains` (outside torch.compile)."""
        frozen = self._frozen
        if frozen is not None and frozen[0] == dtype and not torch.compiler.is_compiling():
            return frozen[1][which]
        return self._read_weights(dtype) if which == "read" else self._write_terms(dtype)

    def _weighted_sum(self, weights: tuple[torch.Tensor, ...], streams: Streams) -> torch.Tensor:
        """sum_i weights[i] * streams[i] with 0-dim weights, per row or plain as the form says."""
        if _per_row(self.form):
            total = _rows(weights[0], streams[0]) * streams[0]
            for w, s in zip(weights[1:], streams[1:]):
                total = total + _rows(w, s) * s
            return total
        total = streams[0] * weights[0]
        for w, s in zip(weights[1:], streams[1:]):
            total = torch.addcmul(total, s, w)
        return total

    def mixing_logits(self) -> nn.Parameter | None:
        """The parameter that the post-step clamp applies to (None with one stream)."""
        if self.n_streams == 1:
            return None
        return self.alpha_logit if self.n_streams == 2 else self.mix_logits


@contextmanager
def frozen_gains(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Compute every mHC module's gains once (in `dtype`, without autograd) and reuse them until the block ends.
    The weights must not change inside the block: the gains would not follow them."""
    modules = [m for m in model.modules() if isinstance(m, MHCLite) and m.n_streams > 1]
    with torch.no_grad():
        for m in modules:
            m._frozen = (dtype, {"read": m._read_weights(dtype), "write": m._write_terms(dtype)})
    try:
        yield
    finally:
        for m in modules:
            m._frozen = None


@torch.no_grad()
def clamp_mixing_logits_(params: list[torch.Tensor], mirror: FlatMirror) -> None:
    """The seed's post-step clamp of the mixing logits of many modules at once, in place (same dtype and device):
    non-finite values to 0, then clamp to [-3, 3]. The tiny logits go through `mirror`'s flat buffer: ~4 kernels
    for a model's 40 sub-layers instead of 80, each of which the host issues one by one in eager mode."""
    if not params:
        return
    flat, views = mirror.load(params)
    torch.nan_to_num_(flat, nan=0.0, posinf=0.0, neginf=0.0).clamp_(-MIX_CLAMP, MIX_CLAMP)
    torch._foreach_copy_(params, views)
