"""Telling whether weights changed, for values derived from them and kept between calls (no host sync)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def weights_stamp(tensors: Iterable[torch.Tensor]) -> tuple | None:
    """A value that differs whenever one of `tensors` may have changed: each one's identity (a replaced Parameter),
    data pointer (a `.data = ...` assignment) and version counter (in-place ops: optimizer steps, `copy_`,
    `load_state_dict`). In-place edits through `.data` bump no version and are not seen. None when one is an
    inference tensor: those keep no version counter, so a change cannot be told and derived values must be
    recomputed."""
    out = []
    for t in tensors:
        if t.is_inference():
            return None
        out.append((id(t), t.data_ptr(), t._version))
    return tuple(out)
