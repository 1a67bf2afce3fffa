"""Ternary quantisation-aware training (docs/original-runs.md), and the factory every hidden linear goes through.

With `quant="ternary"` each hidden projection (attention, FFN, wavefield, Engram W_k/W_v, LoopLM gates) trains
fp32 shadow weights but computes its forward with
- weights quantised per group of `group_size` consecutive elements (row-major): s = max(mean|w|, 1e-8),
  q = clamp(round(w/s), -1, 1), W_hat = q*s (zero padding when numel is not a multiple of the group), and
- activations quantised per token to 8 bits: a = max(max|x|, 1e-8), x_hat = clamp(round(x*127/a), -127, 127)*a/127,
both with a straight-through estimator (value of the quantised tensor, gradient of the identity).
The tied embedding/head and the MTP heads stay full precision, as in the seed.
Note: torch.round rounds half to even where the seed (candle) rounds half away from zero; only exact ties differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.frozen import Linear


def ternary_weight(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group absmean ternary quantisation of `w` (values only, no gradient trick)."""
    flat = w.reshape(-1)
    pad = (-flat.numel()) % group_size
    groups = F.pad(flat, (0, pad)).view(-1, group_size)
    scale = groups.abs().mean(dim=1, keepdim=True).clamp_min(1e-8)
    q = (groups / scale).round().clamp(-1, 1) * scale
    return q.reshape(-1)[: flat.numel()].view_as(w)


def quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token (last dim) symmetric absmax quantisation to `bits` bits (values only)."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
    return (x * qmax / scale).round().clamp(-qmax, qmax) * scale / qmax


def straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Forward value `x_hat`, gradient of the identity with respect to `x`."""
    return x + (x_hat - x).detach()


class TernaryLinear(nn.Linear):
    """A bias-free linear layer whose forward uses ternary weights and 8-bit activations (STE)."""

    def __init__(self, in_features: int, out_features: int, group_size: int = 128) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = straight_through(self.weight, ternary_weight(self.weight, self.group_size))
        x = straight_through(x, quantize_activations(x))
        return F.linear(x, w)


def make_linear(in_features: int, out_features: int, cfg: ModelConfig) -> nn.Linear:
    """The hidden linear layer for this config: bias-free, N(0, init_std), ternary QAT when `cfg.quant` says so."""
    if cfg.quant == "ternary":
        layer: nn.Linear = TernaryLinear(in_features, out_features, cfg.quant_group_size)
    else:
        layer = Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, mean=0.0, std=cfg.init_std)
    return layer


def make_fused_linear(in_features: int, blocks: tuple[int, ...], cfg: ModelConfig) -> nn.Linear:
    """One hidden linear layer whose rows stack `blocks` maps of the same input (`nanotrain.model.fused`). Each
    block is initialised as `make_linear` initialises a layer of its own, in order, so a model draws the same
    initial weights whether its projections are fused or not."""
    from nanotrain.model.fused import set_row_blocks

    parts = [make_linear(in_features, rows, cfg) for rows in blocks]
    with torch.random.fork_rng(devices=[]):  # the layer's own init draws nothing from the stream
        if cfg.quant == "ternary":
            layer: nn.Linear = TernaryLinear(in_features, sum(blocks), cfg.quant_group_size)
        else:
            layer = Linear(in_features, sum(blocks), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.cat([part.weight for part in parts]))
    set_row_blocks(layer.weight, blocks)
    return layer
