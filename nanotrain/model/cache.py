"""Decoding state shared by the model's caches: where the tokens of a call sit, and per-row reads and writes.

A cached forward (`GPT.forward(idx, input_pos)`) gets one position per token, `pos` [B, T], each row consecutive
(row b holds positions pos[b, 0] .. pos[b, 0] + T - 1) but rows independent of each other, so prompts of
different lengths decode in one batch, each row at its own position. Every cache is a preallocated buffer with
the position as its dim 1 or 2; a call writes its tokens' entries at their positions (`write_at`) and reads
what it needs by position (`read_before`, or the attention mask), so the shapes of a decode step never depend on
the position and one compiled graph serves every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Positions:
    """The positions of one cached call: `pos` [B, T] and the attention mask [B, 1, T, L] (key position <= query
    position) over the first L cache positions, made once per call and shared by every layer. `keep` is the mask
    as booleans, `bias` the same as an additive float mask (0 or -inf; SDPA takes it without converting)."""

    pos: torch.Tensor
    keep: torch.Tensor
    bias: torch.Tensor
    _index: dict = field(default_factory=dict)  # write index per (dim, shape): layers of one shape share it

    @property
    def length(self) -> int:
        """L: how many cache positions the call reads."""
        return self.keep.shape[-1]

    @classmethod
    def make(cls, pos: torch.Tensor, key_positions: torch.Tensor, dtype: torch.dtype) -> Positions:
        keep = key_positions[None, None, None, :] <= pos[:, None, :, None]
        bias = torch.zeros(keep.shape, dtype=dtype, device=pos.device).masked_fill_(~keep, float("-inf"))
        return cls(pos, keep, bias)


def write_at(buf: torch.Tensor, dim: int, at: Positions, values: torch.Tensor) -> None:
    """buf[b, ..., pos[b, t], ...] = values[b, ..., t, ...] along `dim` (1 or 2), in place, for rows b < B."""
    key = (dim, values.shape)
    index = at._index.get(key)
    if index is None:
        shape = [1] * values.dim()
        shape[0], shape[dim] = values.shape[0], at.pos.shape[1]
        index = at._index[key] = at.pos.view(shape).expand(values.shape)
    if values.dtype != buf.dtype:
        values = values.to(buf.dtype)
    rows = values.shape[0]
    (buf if rows == buf.shape[0] else buf[:rows]).scatter_(dim, index, values)


def read_before(buf: torch.Tensor, start: torch.Tensor, n: int) -> torch.Tensor:
    """buf[b, start[b]-n : start[b]] along dim 1 for each row b < len(start): [B, n, ...], zeros before position 0."""
    b = start.shape[0]
    back = start[:, None] - torch.arange(n, 0, -1, device=buf.device)
    index = back.clamp(min=0).view(b, n, *([1] * (buf.dim() - 2))).expand(b, n, *buf.shape[2:])
    rows = buf[:b].gather(1, index)
    keep = (back >= 0).view(b, n, *([1] * (buf.dim() - 2)))
    return torch.where(keep, rows, torch.zeros((), dtype=buf.dtype, device=buf.device))
