"""Lion (docs/original-runs.md): sign of an interpolated momentum, for embeddings, norms, biases and other small params.

  u = sign(β1·m + (1−β1)·g)   (sign(0) = 0, so a zeroed gradient on a zero state leaves the weight untouched)
  W ← W·(1 − lr·wd) − lr·u    (decoupled weight decay; wd = 0 in the seed)
  m ← β2·m + (1−β2)·g

Every parameter group is updated with `torch._foreach_*` ops over its tensors: no per-parameter Python
arithmetic and no host synchronisation in `step()`. `step(ok=flag)` gates the update on a device-side flag, as
Muon's does: where it is false, weights and state stay exactly as they were.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from nanotrain.flat import FlatMirror
from nanotrain.optim.gate import gate_value, zeroed_copies_unless


class Lion(torch.optim.Optimizer):
    """Lion with betas (0.9, 0.99) by default. State per parameter: `exp_avg` (m), created at construction."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"Lion: lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # per (group, device, dtype): the gated step's gradient copies (memory: one more copy of Lion's gradients,
        # ~67 MB for full-scale baseline-v1)
        self._mirrors: dict[tuple, FlatMirror] = {}

    @torch.no_grad()
    def step(self, closure=None, ok: Tensor | None = None):  # noqa: ANN001 - torch.optim.Optimizer signature
        """One update of every parameter that has a gradient; with `ok` (a 0-dim bool tensor on the parameters'
        device) only where it is true, decided on the device (where it is not, the step reads zeroed copies of the
        gradients and leaves the gradients themselves as they were)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            # foreach ops need one device and dtype per call
            buckets: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    buckets[(p.device, p.dtype)].append(p)
            for key, params in buckets.items():
                grads = [p.grad for p in params]
                if ok is not None:
                    grads = zeroed_copies_unless(ok, grads, self._mirrors.setdefault((i, *key), FlatMirror()))
                self._update(group, params, grads, ok)
        return loss

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], ok: Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        update = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(update, grads, alpha=1.0 - beta1)     # β1·m + (1−β1)·g
        torch._foreach_sign_(update)
        if ok is not None:
            torch._foreach_mul_(update, gate_value(ok, 1.0, 0.0, params[0]))  # a skipped step adds exactly zero
        if group["weight_decay"] != 0.0:
            decay = 1.0 - lr * group["weight_decay"]
            torch._foreach_mul_(params, decay if ok is None else gate_value(ok, decay, 1.0, params[0]))
        torch._foreach_add_(params, update, alpha=-lr)
        # m ← β2·m + (1−β2)·g; a skipped step multiplies by 1 and adds the zeroed gradient
        torch._foreach_mul_(exp_avgs, beta2 if ok is None else gate_value(ok, beta2, 1.0, exp_avgs[0]))
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)
