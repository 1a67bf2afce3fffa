"""nanotrain.flat.FlatMirror: one reusable flat buffer with views shaped like a list of tensors."""

from __future__ import annotations

import pytest
import torch

from nanotrain.flat import FlatMirror


def test_load_copies_into_views_and_reuses_the_buffer():
    a, b = torch.randn(3, 4), torch.randn(5)
    mirror = FlatMirror()
    flat, views = mirror.load([a, b])
    assert flat.shape == (17,) and [v.shape for v in views] == [a.shape, b.shape]
    assert torch.equal(views[0], a) and torch.equal(views[1], b)
    assert views[0].data_ptr() == flat.data_ptr()
    flat.zero_()  # the views are the buffer, and the sources are separate
    assert torch.count_nonzero(views[1]) == 0 and torch.count_nonzero(b) == 5
    a2, b2 = torch.randn(3, 4), torch.randn(5)
    flat2, views2 = mirror.load([a2, b2])
    assert flat2.data_ptr() == flat.data_ptr() and torch.equal(views2[0], a2) and torch.equal(views2[1], b2)


def test_new_shapes_or_dtype_remake_the_buffer():
    mirror = FlatMirror()
    flat, _ = mirror.load([torch.randn(4)])
    flat2, views2 = mirror.load([torch.randn(2, 3)])
    assert flat2.shape == (6,) and views2[0].shape == (2, 3)
    flat3, _ = mirror.load([torch.randn(2, 3, dtype=torch.float64)])
    assert flat3.dtype == torch.float64
    empty, no_views = mirror.load([])
    assert empty.numel() == 0 and no_views == [] and mirror.flat is flat3  # nothing to mirror: the buffer stays


def test_mixed_dtypes_are_refused():
    with pytest.raises(ValueError, match="one dtype and one device"):
        FlatMirror().load([torch.randn(2), torch.randn(2, dtype=torch.bfloat16)])
