"""`nanotrain.train.objective`: the training loss and its logged parts, against direct computations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nanotrain.model.mtp import mtp_loss
from nanotrain.train import ENTROPY_ROW_STRIDE, objective


def outputs(batch: int, seq: int = 9, vocab: int = 37, heads: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=g) * 3
    mtp = [torch.randn(batch, seq, vocab, generator=g) for _ in range(heads)]
    y = torch.randint(0, vocab, (batch, seq), generator=g)
    return SimpleNamespace(logits=logits, mtp_logits=mtp), y


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_loss_ce_and_mtp_are_exact(batch):
    out, y = outputs(batch)
    loss, parts = objective(out, y, 0.1, 0.2)
    smoothed = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), label_smoothing=0.1)
    assert loss.item() == pytest.approx((smoothed + 0.2 * mtp_loss(out.mtp_logits, y)).item(), rel=1e-5)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(out.logits.flatten(0, 1), y.flatten()).item(),
                                               rel=1e-5)
    assert parts["mtp"].item() == pytest.approx(mtp_loss(out.mtp_logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_entropy_is_the_exact_entropy_of_every_strided_row(batch):
    """The logged entropy reads rows 0, 4, 8, ... (a cheaper, unbiased estimate; evaluation stays exact)."""
    out, y = outputs(batch)
    _, parts = objective(out, y, 0.1, 0.2)
    rows = out.logits[::ENTROPY_ROW_STRIDE]
    expected = -(rows.softmax(-1) * rows.log_softmax(-1)).sum(-1).mean()
    assert parts["entropy"].item() == pytest.approx(expected.item(), rel=1e-5)
    full = -(out.logits.softmax(-1) * out.logits.log_softmax(-1)).sum(-1).mean()
    if batch > ENTROPY_ROW_STRIDE:  # the rows left out do count in the full mean
        assert parts["entropy"].item() != pytest.approx(full.item(), rel=1e-6)
