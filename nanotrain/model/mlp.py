"""SwiGLU feed-forward network (docs/original-runs.md): w_down(silu(w_gate x) * w_up x)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.quant import make_fused_linear, make_linear


def ffn_hidden_dim(dim: int, mult: float, multiple_of: int) -> int:
    """Hidden width: floor(dim*mult) rounded up to a multiple of `multiple_of` (seed `ffn_dim()`: 1024*3 -> 3072)."""
    return math.ceil(math.floor(dim * mult) / multiple_of) * multiple_of


class SwiGLU(nn.Module):
    """Gated FFN, bias-free: `w_gate_up` [2*hidden, dim] holds the gate rows then the up rows (one matrix product;
    Muon orthogonalises the two blocks one by one), `w_down` [dim, hidden]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = ffn_hidden_dim(cfg.dim, cfg.ffn_mult, cfg.ffn_multiple_of)
        self.w_gate_up = make_fused_linear(cfg.dim, (hidden, hidden), cfg)
        self.w_down = make_linear(hidden, cfg.dim, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)
