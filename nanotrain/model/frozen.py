"""Frozen weights for inference: values derived from the weights once per call instead of once per step.

`frozen_weights(model, dtype)` is the block the inference engine decodes in and held-out evaluation runs in. The
weights must not change inside it (nothing trains there; autograd cannot pass through it). On entry it computes
- mHC's per-sub-layer gains (`nanotrain.model.mhc.frozen_gains`), and
- on a CPU, in fp32: every plain linear weight (and the tied embedding/head) reordered into oneDNN's blocked
  layout (`torch.ops.mkldnn._reorder_linear_weight`), and every product runs through oneDNN
  (`_linear_pointwise`) with it instead of the default `F.linear`, which on a CPU calls MKL. On the AMD EPYC
  (Zen 4) VMs (oneDNN's kernels use AVX-512 there: `ONEDNN_VERBOSE=1` prints the ISA) a forward pass's products
  took 1.9-4.8x as long through MKL at every row count from 1 (batch-1 decoding) to 2,048 (held-out loss), at tiny
  and at full scale. (One small weight multiplied by one row again and again, hot in the cache, is faster through
  MKL's matrix-vector kernel; in a forward pass each weight comes from memory.) `benchmarks/bench_linear.py`
  measures both on the machine at hand. The packed copies live only inside the block: made on entry, dropped on
  exit, so they can never go stale.
Outside the block (training, compiled code, CUDA) every layer computes as a plain `nn.Linear`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through `packed` (weight in oneDNN's layout) when given."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` that uses a packed copy of its weight while `frozen_weights` has set one."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.packed, self.bias)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `frozen_weights` packs linear weights for this device and dtype (CPU, fp32, oneDNN built in)."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Pack every `Linear`'s weight (and a `GPT`'s tied head) for oneDNN until the block ends; nothing happens
    unless `can_pack` holds for the model's parameters."""
    param = next(model.parameters())
    if not can_pack(param.device, param.dtype):
        yield
        return
    layers = [m for m in model.modules() if type(m) is Linear and m.weight.dtype == torch.float32]
    heads = [m for m in model.modules() if hasattr(m, "packed_head")]
    with torch.no_grad():
        for m in layers:
            m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach())
        for m in heads:
            m.packed_head = torch.ops.mkldnn._reorder_linear_weight(m.tok_embed.weight.detach())
    try:
        yield
    finally:
        for m in layers:
            m.packed = None
        for m in heads:
            m.packed_head = None


@contextmanager
def frozen_weights(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """mHC gains computed once (`frozen_gains`) and linear weights packed (`packed_linears`) until the block ends."""
    from nanotrain.model.mhc import frozen_gains

    with frozen_gains(model, dtype), packed_linears(model):
        yield
