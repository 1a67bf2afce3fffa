"""Multi-token prediction heads (docs/original-runs.md).

`n` independent Linear(dim -> vocab, bias) heads read the final normed hidden state h (shared trunk). Head i
(0-based) at position t predicts token t+i+2, i.e. targets y[:, t+i+1] where y is the next-token target row.
The heads are full precision (never ternary) and use the seed's init: candle's Kaiming-normal fan-in weights
(std sqrt(2/dim)) and uniform(+-1/sqrt(dim)) biases.

The trainer adds `cfg.mtp_weight * mtp_loss(out.mtp_logits, y)` to the main loss, i.e. 0.2 * sum_i w_i CE_i with
w_i = max(0.5^i, 0.01) = [1, 0.5, 0.25] and plain (unsmoothed) cross-entropy, positions past the end dropped.
The seed leaves MTP parameters out of the logged/clipped grad norm (§5.2); that choice is the trainer's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mtp_weights(n_heads: int) -> list[float]:
    """Seed weights w_i = max(0.5^i, 0.01)."""
    return [max(0.5 ** i, 0.01) for i in range(n_heads)]


def mtp_loss(mtp_logits: list[torch.Tensor], targets: torch.Tensor,
             weights: list[float] | None = None, ignore_index: int = -100) -> torch.Tensor:
    """sum_i w_i * CE(head i) for next-token targets y [B, T] (y[:, t] = x[t+1]); head i at t predicts y[:, t+i+1].

    Returns a 0-dim tensor (0.0 without heads or when T is too short for any head).
    """
    if weights is None:
        weights = mtp_weights(len(mtp_logits))
    total = targets.new_zeros((), dtype=torch.float32)
    t = targets.shape[1]
    for i, (logits, w) in enumerate(zip(mtp_logits, weights)):
        shift = i + 1
        if t <= shift:
            continue
        pred = logits[:, : t - shift].float()
        tgt = targets[:, shift:]
        total = total + w * F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1),
                                            ignore_index=ignore_index)
    return total


class MTPHeads(nn.Module):
    """`heads.{i}` = Linear(dim, vocab, bias=True), one per extra future token."""

    def __init__(self, dim: int, vocab_size: int, n_heads: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, vocab_size, bias=True) for _ in range(n_heads))
        for head in self.heads:
            nn.init.normal_(head.weight, std=math.sqrt(2.0 / dim))
            nn.init.uniform_(head.bias, -1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [head(h) for head in self.heads]
