"""mHC-lite (seed-spec §2.2-2.3): the formulas, the seed's dead symmetric init, and the broken-symmetry default."""

import dataclasses

import pytest
import torch

from nanotrain.model import GPT
from nanotrain.model.mhc import MHCLite, collapse_streams, expand_streams
from nanotrain.recipes import get_recipe


def small_model(init: str) -> GPT:
    cfg, _ = get_recipe("baseline").build("tiny")
    cfg = dataclasses.replace(cfg, mhc_init=init, dim=64, n_heads=4, n_kv_heads=2, n_layers=3, vocab_size=97,
                              max_seq_len=32)
    torch.manual_seed(0)
    return GPT(cfg)


def streams_after_first_block(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    rope = (model.rope_cos[: idx.shape[1]], model.rope_sin[: idx.shape[1]])
    x = expand_streams(model.tok_embed(idx), model.cfg.mhc_streams)
    return model.blocks[0](x, rope, None, None, False)


def train_steps(model: GPT, steps: int) -> list[torch.Tensor]:
    """A few SGD steps on a fixed random batch; returns the alpha_logit grads of the first step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    idx = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(3))
    first = []
    for step in range(steps):
        opt.zero_grad()
        logits = model(idx[:, :-1]).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        if step == 0:
            first = [m.alpha_logit.grad.clone() for m in model.modules() if isinstance(m, MHCLite)]
        opt.step()
        model.after_optimizer_step()
    return first


def test_prepare_apply_collapse_follow_the_spec_formulas():
    torch.manual_seed(0)
    mhc = MHCLite(2, "broken")
    with torch.no_grad():
        for p in mhc.parameters():
            p.normal_()
    x = torch.randn(2, 3, 5, 8)
    out = torch.randn(3, 5, 8)
    h_pre = torch.sigmoid(mhc.pre_logits + mhc.pre_bias)
    h_post = 2 * torch.sigmoid(mhc.post_logits + mhc.post_bias)
    a = torch.sigmoid(mhc.alpha_logit)
    torch.testing.assert_close(mhc.prepare(x), h_pre[0] * x[0] + h_pre[1] * x[1])
    s0, s1 = x[0] + h_post[0] * out, x[1] + h_post[1] * out  # residual before the mix
    expected = torch.stack((a * s0 + (1 - a) * s1, (1 - a) * s0 + a * s1))
    torch.testing.assert_close(mhc.apply(x, out), expected)
    torch.testing.assert_close(collapse_streams(x), (x[0] + x[1]) / 2)
    torch.testing.assert_close(expand_streams(x[0], 2), torch.stack((x[0], x[0])))


def test_one_stream_is_a_plain_residual_without_parameters():
    mhc = MHCLite(1)
    assert list(mhc.parameters()) == []
    x, out = torch.randn(1, 2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(mhc.prepare(x), x[0])
    torch.testing.assert_close(mhc.apply(x, out), x + out)


def test_many_streams_mix_with_a_doubly_stochastic_matrix():
    mhc = MHCLite(4, "broken")
    with torch.no_grad():
        mhc.mix_logits.normal_()
    m = mhc.mixing_matrix()
    torch.testing.assert_close(m.sum(dim=0), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    assert (m > 0).all()


def test_seed_init_is_symmetric_alpha_gets_exactly_zero_gradient_and_streams_never_differ():
    model = small_model("seed")
    grads = train_steps(model, steps=3)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert all(m.alpha_logit.item() == 0.0 for m in model.modules() if isinstance(m, MHCLite))
    with torch.no_grad():
        streams = streams_after_first_block(model, torch.randint(0, 97, (2, 9)))
    assert torch.equal(streams[0], streams[1])


def test_broken_init_gives_alpha_a_gradient_and_the_streams_diverge():
    model = small_model("broken")
    alpha_before = [m.alpha_logit.item() for m in model.modules() if isinstance(m, MHCLite)]
    grads = train_steps(model, steps=3)
    # every mix but the last (which the stream mean makes inert) learns
    assert all(g.abs().item() > 0 for g in grads[:-1])
    alpha_after = [m.alpha_logit.item() for m in model.modules() if isinstance(m, MHCLite)]
    assert all(a != b for a, b in zip(alpha_before[:-1], alpha_after[:-1]))
    with torch.no_grad():
        streams = streams_after_first_block(model, torch.randint(0, 97, (2, 9)))
    assert (streams[0] - streams[1]).abs().max() > 1e-3


def test_matmul_and_pointwise_forms_agree_in_value_and_gradient():
    """prepare/apply have two forms (matrix products; per-row pointwise products): the same maths, in fp64."""
    def run(form: str, n: int):
        torch.manual_seed(0)
        m = MHCLite(n).double()
        m.form = form
        streams = torch.randn(n, 2, 5, 8, dtype=torch.float64, requires_grad=True)
        out = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        y = m.apply(streams, out * m.prepare(streams))
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        return [y.detach(), streams.grad, out.grad] + [p.grad for p in m.parameters()]

    for n in (2, 3):
        for a, b in zip(run("matmul", n), run("pointwise", n), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_form_choice_and_set_mhc_form():
    """auto: matrix products in eager mode (pointwise is only picked while torch.compile traces); set_mhc_form
    sets every mHC module of a model and refuses unknown forms."""
    from nanotrain.model.mhc import _pointwise, set_mhc_form

    streams = torch.zeros(2, 1, 3, 4)
    assert not _pointwise("auto", streams)
    assert _pointwise("pointwise", streams) and not _pointwise("matmul", streams)
    model = small_model("broken")
    set_mhc_form(model, "pointwise")
    forms = {m.form for m in model.modules() if isinstance(m, MHCLite)}
    assert forms == {"pointwise"}
    with pytest.raises(ValueError, match="mHC form must be one of auto, matmul, pointwise, got 'fast'"):
        set_mhc_form(model, "fast")
