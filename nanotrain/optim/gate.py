"""Device-side gating of an optimizer step: skip a non-finite step without reading a flag back to the host.

Reading `isfinite(loss) & isfinite(grad norm)` back every step would make the host wait for the GPU to finish
the step before it could queue the next. So the trainer's NaN guard keeps the flag on the device and the
optimizers take it as `step(ok=flag)`: where it is false they read zeros instead of the gradients (Muon zeroes its
gradients in place, `zero_grads_unless`; Lion reads zeroed copies, `zeroed_copies_unless`; both clear NaN and inf,
unlike a multiplication by 0) and every coefficient that would move a weight or a state buffer
is chosen on the device (`gate_value`), so a skipped step leaves them bit-for-bit unchanged. With the flag true,
the gated step computes exactly what the plain step does for fp32 parameters (what the trainer keeps) and for
Lion in bf16 (tests check both); Muon's momentum `lerp` with a tensor weight can differ from the Python-number
weight in the last bit for bf16 buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nanotrain.flat import FlatMirror


def gate_value(ok: Tensor, value: float, otherwise: float, like: Tensor) -> Tensor:
    """A 0-dim tensor in `like`'s dtype, on `ok`'s device: `value` where `ok` is true, else `otherwise` (no host
    read). `like`'s dtype because foreach `mul` applies a Python-number coefficient rounded to the tensor's dtype."""
    return torch.where(ok, value, otherwise).to(dtype=like.dtype)


def zero_grads_unless(ok: Tensor, grads: list[Tensor]) -> None:
    """Zero every gradient in place where the 0-dim bool `ok` is false (NaN and inf included). One kernel per
    gradient and no copy: for a few large gradients (Muon's)."""
    bad = ~ok
    for g in grads:
        g.masked_fill_(bad, 0.0)


def zeroed_copies_unless(ok: Tensor, grads: list[Tensor], mirror: FlatMirror) -> list[Tensor]:
    """Copies of `grads` in `mirror`'s flat buffer, all zero (NaN and inf included) where the 0-dim bool `ok` is
    false; the gradients themselves are unchanged. A few kernels for the whole list instead of one per gradient:
    for many small gradients (Lion's ~250)."""
    flat, views = mirror.load(grads)
    flat.masked_fill_(~ok, 0.0)
    return views
