"""Decoding state shared by the model's caches: where the tokens of a call sit, and per-row reads and writes.

A cached forward (`GPT.forward(idx, input_pos)`) gets one position per token, `pos` [B, T], each row consecutive
(row b holds positions pos[b, 0] .. pos[b, 0] + T - 1) but rows independent of each other, so prompts of
different lengths decode in one batch, each row at its own position. Every cache is a preallocated buffer with
the position as its dim 1 or 2; a call writes its tokens' entries at their positions (`write_at`) and reads
what it needs by position (`read_before`, or the attention mask), so the shapes of a decode step never depend on
the position and one compiled graph serves every step.

When every row sits at the same positions and the first one is known on the host (`start`: the caller passed
one position vector for all rows, on the CPU, where reading it costs no device sync), the same reads and writes
are slices instead of per-row gathers and scatters, and a call whose queries see every key it reads needs no
mask at all. Same values either way; a batch-1 decode step runs about as many ops as a plain decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Positions:
    """The positions of one cached call: `pos` [B, T] over the first `length` (L) cache positions
    (`key_positions`), and `start`, every row's first position when all rows share them and it is known on the
    host (None otherwise). The attention mask (key position <= query position) is made on first use and shared
    by every layer: `keep` as booleans [B, 1, T, L], `bias` as an additive float mask (0 or -inf; SDPA takes it
    without converting). Both are None when no key needs masking (`mask_free`)."""

    pos: torch.Tensor
    key_positions: torch.Tensor
    dtype: torch.dtype
    start: int | None = None
    _mask: tuple | None = None
    _index: dict = field(default_factory=dict)  # write index per (dim, shape): layers of one shape share it

    @property
    def length(self) -> int:
        """L: how many cache positions the call reads."""
        return self.key_positions.shape[0]

    @property
    def mask_free(self) -> bool:
        """True when every query may read every key: one shared position per row that is the last key."""
        return self.start is not None and self.pos.shape[1] == 1 and self.length == self.start + 1

    @property
    def square_causal(self) -> bool:
        """True when the call is a plain causal square: shared positions 0..T-1 over exactly T keys."""
        return self.start == 0 and self.length == self.pos.shape[1]

    def _masks(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self._mask is None:
            if self.mask_free:
                self._mask = (None, None)
            else:
                keep = self.key_positions[None, None, None, :] <= self.pos[:, None, :, None]
                bias = torch.zeros(keep.shape, dtype=self.dtype, device=keep.device)
                self._mask = (keep, bias.masked_fill_(~keep, float("-inf")))
        return self._mask

    @property
    def keep(self) -> torch.Tensor | None:
        return self._masks()[0]

    @property
    def bias(self) -> torch.Tensor | None:
        return self._masks()[1]


def write_at(buf: torch.Tensor, dim: int, at: Positions, values: torch.Tensor) -> None:
    """buf[b, ..., pos[b, t], ...] = values[b, ..., t, ...] along `dim` (1 or 2), in place, for rows b < B."""
    rows = values.shape[0]
    target = buf if rows == buf.shape[0] else buf[:rows]
    if at.start is not None:
        target.narrow(dim, at.start, values.shape[dim]).copy_(values)
        return
    key = (dim, values.shape)
    index = at._index.get(key)
    if index is None:
        shape = [1] * values.dim()
        shape[0], shape[dim] = values.shape[0], at.pos.shape[1]
        index = at._index[key] = at.pos.view(shape).expand(values.shape)
    if values.dtype != buf.dtype:
        values = values.to(buf.dtype)
    target.scatter_(dim, index, values)


def read_before(buf: torch.Tensor, at: Positions, n: int) -> torch.Tensor:
    """buf[b, p_b-n : p_b] along dim 1 for each row b < B, where p_b is the row's first position in the call:
    [B, n, ...], zeros before position 0."""
    b = at.pos.shape[0]
    if at.start is not None and at.start >= n:
        return buf[:b].narrow(1, at.start - n, n)
    back = at.pos[:, :1] - torch.arange(n, 0, -1, device=buf.device)  # [B, n]
    rows = buf[torch.arange(b, device=buf.device)[:, None], back.clamp(min=0)]
    keep = (back >= 0).view(b, n, *([1] * (buf.dim() - 2)))
    return torch.where(keep, rows, torch.zeros((), dtype=buf.dtype, device=buf.device))
