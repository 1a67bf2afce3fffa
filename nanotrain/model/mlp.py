"""SwiGLU feed-forward network (seed-spec §2.5): w_down(silu(w_gate x) * w_up x)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.quant import make_linear


def ffn_hidden_dim(dim: int, mult: float, multiple_of: int) -> int:
    """Hidden width: floor(dim*mult) rounded up to a multiple of `multiple_of` (seed `ffn_dim()`: 1024*3 -> 3072)."""
    return math.ceil(math.floor(dim * mult) / multiple_of) * multiple_of


class SwiGLU(nn.Module):
    """Gated FFN with three bias-free projections `w_gate`, `w_up`, `w_down`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = ffn_hidden_dim(cfg.dim, cfg.ffn_mult, cfg.ffn_multiple_of)
        self.w_gate = make_linear(cfg.dim, hidden, cfg)
        self.w_up = make_linear(cfg.dim, hidden, cfg)
        self.w_down = make_linear(hidden, cfg.dim, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
