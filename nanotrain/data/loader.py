"""Batches of token windows. Training batches are a pure function of (seed, step, rank, world_size).

For `step`, a generator seeded by (seed, step) draws the start of `batch_size * world_size` random windows of
`seq_len + 1` tokens; rank r takes rows r*batch_size:(r+1)*batch_size. So a resumed run sees exactly the
batches it would have seen, and DDP with W ranks x B rows equals one process with W*B rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from nanotrain.errors import UserError


def _check(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise UserError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be positive")
    if len(tokens) < seq_len + 1:
        raise UserError(
            f"split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; use a shorter --seq-len "
            "or a bigger dataset"
        )


class WindowLoader:
    """Random windows: `.batch(step) -> (x, y)` int64 tensors [batch_size, seq_len], y = x shifted by one."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        _check(tokens, seq_len, batch_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def starts(self, step: int) -> np.ndarray:
        """Window starts of this rank's rows for `step`."""
        if step < 0 or self.seed < 0:
            raise ValueError("step and seed must be non-negative")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
        n_starts = len(self.tokens) - self.seq_len  # window [s, s + seq_len] must fit
        global_starts = rng.integers(0, n_starts, size=self.batch_size * self.world_size, dtype=np.int64)
        return global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def windows(self, step: int) -> torch.Tensor:
        """This rank's windows for `step`: int64 [batch_size, seq_len + 1], contiguous (one copy to a device)."""
        idx = self.starts(step)[:, None] + self._offsets[None, :]
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        buf = self.windows(step)
        return buf[:, :-1], buf[:, 1:]


def sequential_batches(tokens: np.ndarray, seq_len: int, batch_size: int,
                       max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows in order (for evaluation): every target token is scored at most once.

    Window i covers tokens[i*seq_len : i*seq_len + seq_len + 1]; the last batch may have fewer rows.
    """
    _check(tokens, seq_len, batch_size)
    n_windows = (len(tokens) - 1) // seq_len
    offsets = np.arange(seq_len + 1, dtype=np.int64)
    done = 0
    for first in range(0, n_windows, batch_size):
        if max_batches is not None and done >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows), dtype=np.int64) * seq_len
        buf = torch.from_numpy(np.asarray(tokens[starts[:, None] + offsets[None, :]], dtype=np.int64))
        yield buf[:, :-1], buf[:, 1:]
        done += 1
