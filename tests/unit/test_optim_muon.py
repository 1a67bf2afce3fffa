"""Muon (docs/original-runs.md): the batched optimizer against a per-matrix reference written from the spec formula."""

from __future__ import annotations

import pytest
import torch

from nanotrain.optim.muon import Muon, newton_schulz

A, B, C = 3.4445, -4.7750, 2.0315


def ref_newton_schulz(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """One matrix, straight from the spec: transpose if tall, divide by ‖X‖_F unless ≤ 1e-7, iterate."""
    X = x.clone()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    norm = X.norm()
    if norm > 1e-7:
        X = X / norm
    for _ in range(steps):
        M = X @ X.T
        X = A * X + (B * M + C * M @ M) @ X
    return X.T if tall else X


def ref_muon_step(params, grads, bufs, lr, beta=0.95, nesterov=True, shape_scaling=False, wd=0.0):
    """W ← W(1 − lr·wd) − lr_eff·NS((1+β)·b_new − β·b_prev), one parameter at a time."""
    for i, (w, g) in enumerate(zip(params, grads)):
        b_prev = bufs[i]
        b_new = beta * b_prev + (1 - beta) * g
        n = (1 + beta) * b_new - beta * b_prev if nesterov else b_new
        rows = w.shape[0]
        cols = w.numel() // rows
        o = ref_newton_schulz(n.reshape(rows, cols)).reshape(w.shape)
        lr_eff = lr * max(1.0, rows / cols) ** 0.5 if shape_scaling else lr
        params[i] = w * (1 - lr * wd) - lr_eff * o
        bufs[i] = b_new


SHAPES = [(8, 16), (8, 16), (8, 16), (16, 8), (16, 8), (6, 2, 3), (5, 7), (12, 1, 4)]


def test_newton_schulz_batched_matches_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 12, 20)
    out = newton_schulz(x)
    for k in range(4):
        torch.testing.assert_close(out[k], ref_newton_schulz(x[k]), rtol=1e-5, atol=1e-5)
    tall = torch.randn(20, 12)
    torch.testing.assert_close(newton_schulz(tall), ref_newton_schulz(tall), rtol=1e-5, atol=1e-5)
    # it does orthogonalise: singular values of the result sit near 1 whatever the input scale
    s = torch.linalg.svdvals(newton_schulz(1e3 * torch.randn(32, 64)))
    assert s.min() > 0.5 and s.max() < 1.3


def test_newton_schulz_zero_guard() -> None:
    assert torch.equal(newton_schulz(torch.zeros(2, 4, 6)), torch.zeros(2, 4, 6))
    tiny = torch.full((3, 3), 1e-9)   # norm ≤ 1e-7: not normalised (normalised entries would be ~0.3)
    out = newton_schulz(tiny)
    assert out.abs().max() < 1e-5
    torch.testing.assert_close(out, ref_newton_schulz(tiny))


@pytest.mark.parametrize("nesterov,shape_scaling,wd", [(True, False, 0.0), (False, True, 0.0), (True, True, 0.1)])
def test_muon_matches_per_matrix_reference(nesterov: bool, shape_scaling: bool, wd: float) -> None:
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    ref = [p.detach().clone() for p in params]
    ref_bufs = [torch.zeros_like(p) for p in params]
    opt = Muon(params, lr=0.02, momentum=0.95, nesterov=nesterov, shape_scaling=shape_scaling, weight_decay=wd)
    for _ in range(4):
        grads = [torch.randn(s) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref_muon_step(ref, grads, ref_bufs, 0.02, nesterov=nesterov, shape_scaling=shape_scaling, wd=wd)
        for p, r, b in zip(params, ref, ref_bufs):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape_scaling,wd", [(False, 0.0), (True, 0.1)])
def test_fused_weight_steps_exactly_like_its_separate_blocks(shape_scaling: bool, wd: float) -> None:
    """A weight marked with row blocks (q/k/v stacked) is updated as the separate matrices are, bit for bit: each
    block orthogonalised on its own, batched with the other matrices of its shape."""
    from nanotrain.model.fused import set_row_blocks

    torch.manual_seed(2)
    blocks = [torch.randn(8, 6), torch.randn(4, 6), torch.randn(4, 6)]
    other = torch.randn(4, 6)  # shares a shape with two blocks: same bucket
    fused = torch.nn.Parameter(torch.cat(blocks))
    set_row_blocks(fused, (8, 4, 4))
    fused_other = torch.nn.Parameter(other.clone())
    separate = [torch.nn.Parameter(b.clone()) for b in blocks] + [torch.nn.Parameter(other.clone())]
    kw = dict(lr=0.02, momentum=0.95, shape_scaling=shape_scaling, weight_decay=wd)
    opt_f, opt_s = Muon([fused, fused_other], **kw), Muon(separate, **kw)
    for _ in range(3):
        grads = [torch.randn(8, 6), torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)]
        fused.grad, fused_other.grad = torch.cat(grads[:3]), grads[3].clone()
        for p, g in zip(separate, grads):
            p.grad = g.clone()
        opt_f.step()
        opt_s.step()
    assert torch.equal(fused.detach(), torch.cat([p.detach() for p in separate[:3]]))
    assert torch.equal(fused_other.detach(), separate[3].detach())
    # the marking matters: the same stacked weight unmarked is orthogonalised as one 16x6 matrix
    marked, unmarked = (torch.nn.Parameter(torch.cat(blocks)) for _ in range(2))
    set_row_blocks(marked, (8, 4, 4))
    for p in (marked, unmarked):
        p.grad = torch.cat(grads[:3])
        Muon([p], **kw).step()
    assert not torch.allclose(marked.detach(), unmarked.detach(), atol=1e-4)


def test_muon_skips_params_without_grad_and_freezes_zero_grads() -> None:
    torch.manual_seed(2)
    a, b, c = (torch.nn.Parameter(torch.randn(4, 4)) for _ in range(3))
    before = [t.detach().clone() for t in (a, b, c)]
    opt = Muon([a, b, c], lr=0.1)
    a.grad = torch.randn(4, 4)
    b.grad = torch.zeros(4, 4)
    opt.step()
    assert not torch.equal(a.detach(), before[0])
    assert torch.equal(b.detach(), before[1])
    assert torch.equal(c.detach(), before[2])


def test_muon_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="rank >= 2"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def test_ns_precision_choice() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    assert Muon([p])._ns_dtype_for(torch.device("cpu")) == torch.float32
    assert Muon([p])._ns_dtype_for(torch.device("cuda")) == torch.bfloat16
    assert Muon([p], ns_dtype=torch.float64)._ns_dtype_for(torch.device("cuda")) == torch.float64


def test_bf16_newton_schulz_is_close_to_fp32() -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 32, 48)
    full, half = newton_schulz(x), newton_schulz(x, dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert (half - full).norm() / full.norm() < 0.05


@pytest.mark.parametrize("nesterov", [True, False])
def test_against_torch_optim_muon(nesterov: bool) -> None:
    """torch.optim.Muon has the same EMA momentum, NS coefficients, shape scaling and decoupled decay; its
    Nesterov form lerp(g, b_new, β) is algebraically the seed's (1+β)·b_new − β·b_prev. Its NS always runs in
    bf16: compare our bf16 path to it tightly and our fp32 path at bf16 accuracy."""
    shapes = [(16, 32), (32, 16), (24, 24)]
    for ns_dtype, tol in ((torch.bfloat16, 1e-3), (torch.float32, 0.03)):
        torch.manual_seed(4)
        ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        start = [p.detach().clone() for p in ours]
        opt = Muon(ours, lr=0.05, nesterov=nesterov, shape_scaling=True, weight_decay=0.1, ns_dtype=ns_dtype)
        ref = torch.optim.Muon(theirs, lr=0.05, nesterov=nesterov, weight_decay=0.1, momentum=0.95)
        for _ in range(3):
            for p, q in zip(ours, theirs):
                g = torch.randn(p.shape)
                p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
        for p, q, s in zip(ours, theirs, start):
            d_ours, d_theirs = p.detach() - s, q.detach() - s
            assert (d_ours - d_theirs).norm() / d_theirs.norm() < tol, (ns_dtype, tuple(s.shape))
