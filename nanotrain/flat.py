"""One flat buffer mirroring a list of tensors, so a per-element fix-up of many small tensors costs a few kernels.

Eager PyTorch launches one kernel per tensor for an in-place op such as `masked_fill_` or `clamp_`, and on a GPU the
host's time to issue each launch adds up (Lion's ~250 small gradients, the 40 mHC mixing logits). A `FlatMirror`
keeps a flat buffer plus views of it shaped like the tensors: `torch._foreach_copy_` fills it (a few kernels for the
whole list), one op fixes it up, and the views are read in place of the tensors or copied back. The buffer and its
views are made once and reused for as long as the tensors' shapes, dtype and device stay the same.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FlatMirror:
    """A reusable flat buffer with views shaped like a list of same-dtype, same-device tensors."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self.flat: Tensor | None = None
        self.views: list[Tensor] = []

    def load(self, tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Copy `tensors` into the buffer (made or remade as their shapes require) and return (flat, views)."""
        if not tensors:
            return torch.empty(0), []
        key = tuple(t.shape for t in tensors) + (tensors[0].dtype, tensors[0].device)
        if key != self._key:
            if any(t.dtype != tensors[0].dtype or t.device != tensors[0].device for t in tensors):
                raise ValueError("FlatMirror: the tensors must share one dtype and one device")
            sizes = [t.numel() for t in tensors]
            self.flat = torch.empty(sum(sizes), dtype=tensors[0].dtype, device=tensors[0].device)
            self.views = [v.view(t.shape) for v, t in zip(self.flat.split(sizes), tensors)]
            self._key = key
        torch._foreach_copy_(self.views, tensors)
        return self.flat, self.views
