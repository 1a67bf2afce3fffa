"""`frozen_weights`: oneDNN-packed linear weights on a CPU, used only inside the block, same outputs as outside."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nanotrain.model import GPT
from nanotrain.model.frozen import Linear, can_pack, frozen_weights, linear, packed_linears
from nanotrain.recipes import get_recipe

needs_onednn = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32),
                                  reason="this torch build has no oneDNN linear")


def tiny_model(name: str = "engram-v1", **changes) -> GPT:
    cfg, _ = get_recipe(name).build("tiny")
    torch.manual_seed(0)
    return GPT(dataclasses.replace(cfg, **changes)).eval()


@needs_onednn
@pytest.mark.parametrize("rows", [0, 1, 2, 7, 64])
def test_packed_linear_matches_f_linear(rows):
    torch.manual_seed(0)
    w, b = torch.randn(96, 40) * 40 ** -0.5, torch.randn(96)
    x = torch.randn(rows, 3, 40)[:, 0]  # not contiguous along the rows
    packed = torch.ops.mkldnn._reorder_linear_weight(w)
    got = linear(x, w, packed, b)
    want = F.linear(x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the packed weight is what ran: the packed copy of another weight (2w) gives that weight's product
    torch.testing.assert_close(linear(x, w, torch.ops.mkldnn._reorder_linear_weight(2 * w)), 2 * F.linear(x, w),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(linear(x, w, None, b), want)  # no packed weight: F.linear itself


@needs_onednn
def test_every_linear_and_the_head_are_packed_inside_the_block_only():
    model = tiny_model()
    layers = [m for m in model.modules() if type(m) is Linear]
    assert len(layers) >= 6 * 4  # wqkv, wo, gate/up and down in every block, plus Engram's w_k/w_v
    with torch.inference_mode(), packed_linears(model):
        assert all(m.packed is not None for m in layers)
        assert model.packed_head is not None
    assert all(m.packed is None for m in layers) and model.packed_head is None


@needs_onednn
@pytest.mark.parametrize("name", ["engram-v1", "baseline-v1", "looplm"])
def test_outputs_inside_frozen_weights_match_the_plain_forward(name):
    model = tiny_model(name)
    idx = torch.randint(0, model.cfg.vocab_size, (3, 40))
    with torch.inference_mode():
        want = model(idx).logits
        with frozen_weights(model, torch.float32):
            got = model(idx).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # (which kernel runs: test_packed_linear_...)


@needs_onednn
def test_a_weight_changed_between_blocks_is_used_by_the_next_block():
    """The packed copies are made on entry and dropped on exit, so they never go stale."""
    model = tiny_model("baseline-v1")
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with torch.inference_mode():
        with frozen_weights(model, torch.float32):
            before = model(idx).logits
        with torch.no_grad():
            model.blocks[0].ffn.w_down.weight.mul_(3.0)
        want = model(idx).logits
        with frozen_weights(model, torch.float32):
            after = model(idx).logits
    torch.testing.assert_close(after, want, rtol=1e-4, atol=1e-4)
    assert (after - before).abs().max() > 1e-3


def test_nothing_is_packed_in_float64():
    model = tiny_model("baseline-v1").double()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with torch.inference_mode():
        want = model(idx).logits
        with frozen_weights(model, torch.float64):
            assert all(m.packed is None for m in model.modules() if type(m) is Linear)
            got = model(idx).logits
    assert torch.equal(got, want)
