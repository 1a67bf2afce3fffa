"""mHC-lite (docs/original-runs.md): the formulas, the seed's dead symmetric init, and the broken-symmetry default."""

import dataclasses

import pytest
import torch

from nanotrain.model import GPT
from nanotrain.model.mhc import MHCLite, collapse_streams, expand_streams, from_original, to_original
from nanotrain.recipes import get_recipe


def small_model(init: str) -> GPT:
    cfg, _ = get_recipe("baseline").build("tiny")
    cfg = dataclasses.replace(cfg, mhc_init=init, dim=64, n_heads=4, n_kv_heads=2, n_layers=3, vocab_size=97,
                              max_seq_len=32)
    torch.manual_seed(0)
    return GPT(cfg)


def streams_after_first_block(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """X [N, B, T, dim] in the seed's stream basis."""
    rope = (model.rope_cos[: idx.shape[1]], model.rope_sin[: idx.shape[1]])
    x = expand_streams(model.tok_embed(idx), model.cfg.mhc_streams)
    return to_original(model.blocks[0](x, rope, None, None, False))


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


@pytest.mark.parametrize("form", ["plain", "per-row"])
def test_prepare_apply_collapse_follow_the_spec_formulas(form):
    """The (P, Q) basis computes the seed's formulas on the streams X_0, X_1, whatever the form."""
    torch.manual_seed(0)
    mhc = MHCLite(2, "broken")
    mhc.form = form
    with torch.no_grad():
        for p in mhc.parameters():
            p.normal_()
    x = torch.randn(2, 3, 5, 8)
    out = torch.randn(3, 5, 8)
    h_pre = torch.sigmoid(mhc.pre_logits + mhc.pre_bias)
    h_post = 2 * torch.sigmoid(mhc.post_logits + mhc.post_bias)
    a = torch.sigmoid(mhc.alpha_logit)
    streams = from_original(x)
    torch.testing.assert_close(to_original(streams), x)
    torch.testing.assert_close(mhc.prepare(streams), h_pre[0] * x[0] + h_pre[1] * x[1])
    s0, s1 = x[0] + h_post[0] * out, x[1] + h_post[1] * out  # residual before the mix
    expected = torch.stack((a * s0 + (1 - a) * s1, (1 - a) * s0 + a * s1))
    torch.testing.assert_close(to_original(mhc.apply(streams, out)), expected)
    torch.testing.assert_close(collapse_streams(streams), (x[0] + x[1]) / 2)
    torch.testing.assert_close(to_original(expand_streams(x[0], 2)), torch.stack((x[0], x[0])))


def test_stream_basis_and_pq_basis_agree_in_value_and_gradient():
    """Gradients too: d loss / d (parameters, out, X) through the (P, Q) basis equal those of the seed's formulas
    written directly on X (fp64), for a chain of three sub-layers."""
    torch.manual_seed(0)
    mods = [MHCLite(2, "broken").double() for _ in range(3)]
    with torch.no_grad():
        for m in mods:
            for p in m.parameters():
                p.normal_()
    x0 = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    weight = torch.linspace(-1, 1, 2 * 5 * 8, dtype=torch.float64).view(2, 5, 8)

    def direct(m, x, o):
        h_pre = torch.sigmoid(m.pre_logits + m.pre_bias)
        h_post = 2 * torch.sigmoid(m.post_logits + m.post_bias)
        u = h_pre[0] * x[0] + h_pre[1] * x[1]
        written = x + h_post.view(2, 1, 1, 1) * (o * torch.tanh(u)).unsqueeze(0)
        return torch.einsum("ij,j...->i...", m.mixing_matrix(), written)

    def via_streams(m, s, o):
        return m.apply(s, o * torch.tanh(m.prepare(s)))

    def grads(run, start):
        outs = [torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)).requires_grad_()
                for i in range(3)]
        x = x0.clone().requires_grad_()
        state = start(x)
        for m, o in zip(mods, outs):
            state = run(m, state, o)
        final = state.mean(0) if isinstance(state, torch.Tensor) else collapse_streams(state)
        for m in mods:
            m.zero_grad()
        (final * weight).sum().backward()
        # every parameter gets a gradient, the inert last mix too (an exact 0; DDP needs it used)
        params = [p.grad.clone() for m in mods for p in m.parameters()]
        return [final.detach(), x.grad] + [o.grad for o in outs] + params

    for form in ("plain", "per-row"):
        for m in mods:
            m.form = form
        for a, b in zip(grads(direct, lambda x: x), grads(via_streams, from_original), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_one_stream_is_a_plain_residual_without_parameters():
    mhc = MHCLite(1)
    assert list(mhc.parameters()) == []
    x, out = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    streams = expand_streams(x, 1)
    torch.testing.assert_close(mhc.prepare(streams), x)
    torch.testing.assert_close(mhc.apply(streams, out)[0], x + out)


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
    # every mix but the last (which the stream mean makes inert) learns; the last gets an exact zero, not None
    assert all(g.abs().item() > 0 for g in grads[:-1])
    assert grads[-1].item() == 0.0
    alpha_after = [m.alpha_logit.item() for m in model.modules() if isinstance(m, MHCLite)]
    assert all(a != b for a, b in zip(alpha_before[:-1], alpha_after[:-1]))
    with torch.no_grad():
        streams = streams_after_first_block(model, torch.randint(0, 97, (2, 9)))
    assert (streams[0] - streams[1]).abs().max() > 1e-3


def test_plain_and_per_row_forms_agree_in_value_and_gradient():
    """prepare/apply have two forms (0-dim gains; gains expanded per row): the same maths, in fp64."""
    def run(form: str, n: int):
        torch.manual_seed(0)
        m = MHCLite(n).double()
        m.form = form
        x = torch.randn(n, 2, 5, 8, dtype=torch.float64, requires_grad=True)
        out = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        streams = from_original(x)
        y = to_original(m.apply(streams, out * m.prepare(streams)))
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        return [y.detach(), x.grad, out.grad] + [p.grad for p in m.parameters()]

    for n in (2, 3):
        for a, b in zip(run("plain", n), run("per-row", n), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_many_streams_follow_the_formulas():
    """N=3: apply writes then mixes with the Sinkhorn matrix; collapse is the mean of the streams."""
    torch.manual_seed(0)
    mhc = MHCLite(3, "broken")
    with torch.no_grad():
        for p in mhc.parameters():
            p.normal_()
    x, out = torch.randn(3, 2, 4, 6), torch.randn(2, 4, 6)
    h_pre = torch.sigmoid(mhc.pre_logits + mhc.pre_bias)
    h_post = 2 * torch.sigmoid(mhc.post_logits + mhc.post_bias)
    streams = from_original(x)
    torch.testing.assert_close(mhc.prepare(streams), torch.einsum("i,i...->...", h_pre, x))
    expected = torch.einsum("ij,j...->i...", mhc.mixing_matrix(), x + h_post.view(3, 1, 1, 1) * out)
    torch.testing.assert_close(to_original(mhc.apply(streams, out)), expected)
    torch.testing.assert_close(collapse_streams(streams), x.mean(0))


def test_form_choice_and_set_mhc_form():
    """auto: plain in eager mode (per-row is only picked while torch.compile traces with autograd on);
    set_mhc_form sets every mHC module of a model and refuses unknown forms."""
    from nanotrain.model.mhc import _per_row, set_mhc_form

    assert not _per_row("auto")
    assert _per_row("per-row") and not _per_row("plain")
    model = small_model("broken")
    set_mhc_form(model, "per-row")
    forms = {m.form for m in model.modules() if isinstance(m, MHCLite)}
    assert forms == {"per-row"}
    with pytest.raises(ValueError, match="mHC form must be one of auto, plain, per-row, got 'fast'"):
        set_mhc_form(model, "fast")


def test_auto_form_picks_per_row_only_when_compiling_with_autograd():
    seen = []

    def probe(x):
        from nanotrain.model.mhc import _per_row

        seen.append(_per_row("auto"))
        return x * 2

    compiled = torch.compile(probe, backend="eager", fullgraph=True)
    compiled(torch.ones(3))
    with torch.no_grad():
        torch._dynamo.reset()
        compiled = torch.compile(probe, backend="eager", fullgraph=True)
        compiled(torch.ones(3))
    assert seen == [True, False]


def test_compiled_training_step_matches_eager_in_loss_and_gradients():
    """What compiled training runs (Inductor, mHC in the per-row form, autograd on) against eager (plain form):
    the same loss and gradients for every parameter, mHC gains included, in fp32."""
    model = small_model("broken")
    idx = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(5))

    def loss_and_grads(forward):
        model.zero_grad()
        logits = forward(idx[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager_loss, eager_grads = loss_and_grads(model)
    torch._dynamo.reset()
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(".mhc_" in n and "alpha_logit" in n and g.abs().item() > 0 for n, g in compiled_grads.items())


@pytest.mark.parametrize("n", [2, 3])
def test_frozen_gains_are_computed_once_and_give_the_same_outputs(n):
    """Inside `frozen_gains` the 0-dim gains are computed on entry and reused by every call (same values, so the
    same outputs bit for bit); outside it, and for another dtype, they are computed by each call."""
    from nanotrain.model.mhc import frozen_gains

    torch.manual_seed(0)
    m = MHCLite(n)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    streams = tuple(torch.randn(2, 5, 8, dtype=torch.float64) for _ in range(n))
    out = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        want = m.prepare(streams), m.apply(streams, out)
        assert m._scalars("write", torch.float64) is not m._scalars("write", torch.float64)  # computed per call
        with frozen_gains(m, torch.float64):
            first = m._scalars("write", torch.float64)
            assert m._scalars("write", torch.float64) is first                 # reused
            assert m._scalars("write", torch.float32) is not first             # another dtype: computed
            got = m.prepare(streams), m.apply(streams, out)
        assert m._frozen is None
    assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
    m.prepare(streams).sum().backward()                                     # outside: gradients flow
    assert m.pre_logits.grad is not None and m.pre_bias.grad is not None
