"""Lion (docs/original-runs.md) against a per-element reference of the spec formula."""

from __future__ import annotations

import math

import pytest
import torch

from nanotrain.optim.lion import Lion


def ref_lion_elementwise(w: list[float], m: list[float], g: list[float], lr: float, b1: float, b2: float,
                         wd: float) -> None:
    """In place, one float at a time:
    u = sign(b1·m + (1−b1)·g); w ← w(1 − lr·wd) − lr·u; m ← b2·m + (1−b2)·g."""
    for i in range(len(w)):
        c = b1 * m[i] + (1 - b1) * g[i]
        u = 0.0 if c == 0 else math.copysign(1.0, c)
        w[i] = w[i] * (1 - lr * wd) - lr * u
        m[i] = b2 * m[i] + (1 - b2) * g[i]


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_lion_matches_elementwise_reference(wd: float) -> None:
    torch.manual_seed(0)
    shapes = [(7,), (3, 5), (2, 3, 4), ()]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    ref_w = [p.detach().flatten().tolist() for p in params]
    ref_m = [[0.0] * p.numel() for p in params]
    opt = Lion(params, lr=0.01, betas=(0.9, 0.99), weight_decay=wd)
    for step in range(5):
        for k, p in enumerate(params):
            g = torch.randn(p.shape, dtype=torch.float64)
            if step == 2:
                g.view(-1)[0] = 0.0
            p.grad = g
            ref_lion_elementwise(ref_w[k], ref_m[k], g.flatten().tolist(), 0.01, 0.9, 0.99, wd)
        opt.step()
        for k, p in enumerate(params):
            torch.testing.assert_close(p.detach().flatten(), torch.tensor(ref_w[k], dtype=torch.float64),
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(opt.state[p]["exp_avg"].flatten(),
                                       torch.tensor(ref_m[k], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_sign_of_zero_is_zero() -> None:
    """Zero gradient on zero state: no movement at all (the wavefield warmup delay relies on it)."""
    p = torch.nn.Parameter(torch.randn(10))
    before = p.detach().clone()
    opt = Lion([p], lr=1.0)
    p.grad = torch.zeros(10)
    opt.step()
    assert torch.equal(p.detach(), before)


def test_groups_keep_their_lr_and_mixed_dtypes() -> None:
    a = torch.nn.Parameter(torch.zeros(4))
    b = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    c = torch.nn.Parameter(torch.zeros(3))
    opt = Lion([{"params": [a, b], "lr": 0.5}, {"params": [c], "lr": 0.25}])
    for t in (a, b, c):
        t.grad = torch.ones_like(t)
    opt.step()
    assert torch.equal(a.detach(), torch.full((4,), -0.5))
    assert torch.equal(b.detach(), torch.full((4,), -0.5, dtype=torch.bfloat16))
    assert torch.equal(c.detach(), torch.full((3,), -0.25))


def test_lion_validates_arguments() -> None:
    with pytest.raises(ValueError, match="betas"):
        Lion([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        Lion([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_step_with_a_true_flag_is_the_plain_step(dtype) -> None:
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(64, dtype=dtype))
    b = torch.nn.Parameter(a.detach().clone())
    plain, gated = Lion([a], lr=0.3, weight_decay=0.1), Lion([b], lr=0.3, weight_decay=0.1)
    for _ in range(3):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
        plain.step()
        gated.step(ok=torch.tensor(True))
    assert torch.equal(a, b) and torch.equal(plain.state[a]["exp_avg"], gated.state[b]["exp_avg"])


def test_skipped_step_between_gated_steps_leaves_no_trace() -> None:
    """A false flag with NaN/inf gradients changes nothing, leaves the gradients as they were (Lion reads zeroed
    copies), and the reused copy buffer does not leak into the next steps: they match a run without the bad step."""
    torch.manual_seed(2)
    shapes = [(5,), (3, 4), (7,)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    plain, gated = Lion(a, lr=0.1, weight_decay=0.1), Lion(b, lr=0.1, weight_decay=0.1)
    for step in range(4):
        grads = [torch.randn(s) for s in shapes]
        if step == 2:
            for t, g in zip(b, grads):
                t.grad = g.clone()
                t.grad.view(-1)[0] = float("nan")
            bad = [t.grad.clone() for t in b]
            gated.step(ok=torch.tensor(False))
            assert all(torch.isnan(t.grad.view(-1)[0]) for t in b)
            assert all(torch.equal(t.grad.nan_to_num(), g.nan_to_num()) for t, g in zip(b, bad))
            continue
        for t, u, g in zip(a, b, grads):
            t.grad, u.grad = g.clone(), g.clone()
        plain.step()
        gated.step(ok=torch.tensor(True))
    assert all(torch.equal(t, u) for t, u in zip(a, b))
    assert all(torch.equal(plain.state[t]["exp_avg"], gated.state[u]["exp_avg"]) for t, u in zip(a, b))
