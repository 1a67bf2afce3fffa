"""Muon: EMA momentum with a Nesterov look-ahead, orthogonalised by Newton–Schulz (docs/original-runs.md).

Per parameter with gradient g (already clipped):
  b_new = β·b + (1−β)·g;  n = (1+β)·b_new − β·b_prev  (Nesterov; n = b_new without it)
  O = NS5(n reshaped to [dim0, ∏rest]);  W ← W·(1 − lr·wd) − lr_eff·O
with lr_eff = lr, or lr·sqrt(max(1, rows/cols)) when `shape_scaling` is on (off in the seed).
The seed's Nesterov form equals β·b_new + (1−β)·g, which is also torch.optim.Muon's (`g.lerp(b_new, β)`), so
with shape scaling on and NS in bf16 this optimizer computes what torch.optim.Muon does, batched and for any rank.

The step is batched: matrices of one group with the same 2-D shape are stacked and orthogonalised by one chain
of batched matmuls (a fused weight, `nanotrain.model.fused`, counts as its row blocks), and the
momentum/update arithmetic uses `torch._foreach_*` ops. Nothing in `step()` reads a value back to the host, so it never
synchronises with the GPU. `step(ok=flag)` gates the update on a device-side flag (`nanotrain.optim.gate`): where the
flag is false, weights and momentum stay bit-for-bit as they were, and the trainer's NaN guard skips a non-finite step
without reading anything back. Under DDP the gradients arrive averaged and every rank runs the same (redundant)
Newton–Schulz, which keeps the replicas identical.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from nanotrain.model.fused import row_blocks
from nanotrain.optim.gate import gate_value, zero_grads_unless

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_NORM_EPS = 1e-7


def newton_schulz(x: Tensor, steps: int = 5, coeffs: tuple[float, float, float] = NS_COEFFS,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalise a matrix [r, c] or a batch [k, r, c] with the quintic Newton–Schulz iteration.

    Each matrix is transposed when rows > cols, divided by its Frobenius norm (left as is when the norm is
    ≤ 1e-7, so a zero gradient yields a zero update), then iterated `steps` times:
    A = X·Xᵀ; X ← a·X + (b·A + c·A²)·X. Runs in `dtype` (default: x's dtype); returns x's dtype and shape.
    """
    a, b, c = coeffs
    single = x.ndim == 2
    X = x.unsqueeze(0) if single else x
    X = X.to(dtype or x.dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    X = X / torch.where(norm > NS_NORM_EPS, norm, torch.ones_like(norm)).to(X.dtype)
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if transposed:
        X = X.mT
    X = X.to(x.dtype)
    return X[0] if single else X


def as_matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """The 2-D shape Muon orthogonalises a parameter as: [dim0, product of the other dims]."""
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols


class Muon(torch.optim.Optimizer):
    """Muon for hidden matrices (rank ≥ 2; higher ranks are flattened to [dim0, ∏rest]).

    `ns_dtype` is the Newton–Schulz precision; None picks bf16 on CUDA and fp32 elsewhere (the seed used fp32).
    State per parameter: `momentum_buffer` (same shape and dtype as the parameter), created at construction.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.012,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, shape_scaling: bool = False,
                 ns_dtype: torch.dtype | None = None) -> None:
        if lr < 0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, shape_scaling=shape_scaling)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon: parameters must have rank >= 2, got shape {tuple(p.shape)}")
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _ns_dtype_for(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    @torch.no_grad()
    def step(self, closure=None, ok: Tensor | None = None):  # noqa: ANN001 - torch.optim.Optimizer signature
        """One update of every parameter that has a gradient; with `ok` (a 0-dim bool tensor on the parameters'
        device) only where it is true, decided on the device (the gradients are zeroed in place where it is not)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = self._momentum(group, params, ok)
            # a fused weight (`nanotrain.model.fused`) is orthogonalised block by block, like separate matrices
            buckets: dict[tuple, list[tuple[Tensor, Tensor, int, int]]] = defaultdict(list)
            for p, u in zip(params, updates):
                cols = as_matrix_shape(p.shape)[1]
                start = 0
                for rows in row_blocks(p):
                    buckets[((rows, cols), p.dtype, p.device)].append((p, u, start, rows))
                    start += rows
            for (shape, _, device), pieces in buckets.items():
                self._update_bucket(group, pieces, shape, device, ok)
        return loss

    def _momentum(self, group: dict[str, Any], params: list[Tensor], ok: Tensor | None) -> list[Tensor]:
        """Update the momentum buffers of `params` and return their (Nesterov) updates. With `ok` false, the
        gradients are zeroed and the coefficient gated, so the momentum does not move."""
        beta = group["momentum"]
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        if ok is None:
            torch._foreach_lerp_(bufs, grads, 1.0 - beta)          # b_new = β·b_prev + (1−β)·g
        else:
            zero_grads_unless(ok, grads)
            weight = gate_value(ok, 1.0 - beta, 0.0, bufs[0])      # lerp by 0 returns b_prev exactly
            torch._foreach_lerp_(bufs, grads, [weight] * len(bufs))
        if group["nesterov"]:
            # (1+β)·b_new − β·b_prev == β·b_new + (1−β)·g (substitute b_prev), i.e. lerp(g, b_new, β)
            return torch._foreach_lerp(grads, bufs, beta)
        return bufs

    def _update_bucket(self, group: dict[str, Any], pieces: list[tuple[Tensor, Tensor, int, int]],
                       shape: tuple[int, int], device: torch.device, ok: Tensor | None) -> None:
        """Newton–Schulz and the weight update for same-shape matrices, as one batch: each piece is (parameter,
        its update, first row, rows), a whole parameter or one row block of a fused one. With `ok` false every
        coefficient is gated, so the weights do not move."""
        rows, cols = shape

        def block(t: Tensor, start: int) -> Tensor:
            matrix = t.view(-1, cols)
            return matrix if start == 0 and matrix.shape[0] == rows else matrix[start:start + rows]

        stacked = torch.stack([block(u.reshape(-1, cols), start) for _, u, start, _ in pieces])
        ortho = newton_schulz(stacked, group["ns_steps"], dtype=self._ns_dtype_for(device))
        if ok is not None:
            ortho = ortho * ok                                      # a skipped step adds exactly zero
        lr = group["lr"]
        lr_eff = lr * max(1.0, rows / cols) ** 0.5 if group["shape_scaling"] else lr
        targets = [block(p, start) for p, _, start, _ in pieces]
        if group["weight_decay"] != 0.0:
            decay = 1.0 - lr * group["weight_decay"]
            torch._foreach_mul_(targets, decay if ok is None else gate_value(ok, decay, 1.0, targets[0]))
        torch._foreach_add_(targets, list(ortho.unbind(0)), alpha=-lr_eff)
