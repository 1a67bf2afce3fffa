"""Ternary QAT (docs/original-runs.md): absmean group weights, 8-bit per-token activations, straight-through grads."""

import dataclasses

import torch
import torch.nn.functional as F

from nanotrain.model import GPT
from nanotrain.model.quant import TernaryLinear, quantize_activations, ternary_weight
from nanotrain.recipes import get_recipe


def test_ternary_weight_groups_of_128_take_values_minus_s_zero_s():
    torch.manual_seed(0)
    w = torch.randn(4, 256)
    q = ternary_weight(w, 128)
    for group, qgroup in zip(w.reshape(-1, 128), q.reshape(-1, 128)):
        s = group.abs().mean()
        assert set(torch.unique(qgroup / s).round().tolist()) <= {-1.0, 0.0, 1.0}
        torch.testing.assert_close(qgroup, (group / s).round().clamp(-1, 1) * s)
    odd = torch.randn(3, 50)  # 150 elements: the last group is zero-padded
    flat = odd.reshape(-1)
    s_last = flat[128:].abs().sum() / 128
    expected_last = (flat[128:] / s_last).round().clamp(-1, 1) * s_last
    torch.testing.assert_close(ternary_weight(odd, 128).reshape(-1)[128:], expected_last)


def test_activations_are_8_bit_per_token():
    x = torch.randn(3, 5, 64) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1)
    q = quantize_activations(x)
    scale = x.abs().amax(-1, keepdim=True)
    levels = q * 127 / scale
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert ((q - x).abs() <= scale / 254 + 1e-6).all()


def test_straight_through_gradients():
    torch.manual_seed(0)
    layer = TernaryLinear(128, 8)
    x = torch.randn(4, 128, requires_grad=True)
    layer(x).sum().backward()
    xq = quantize_activations(x.detach())
    wq = ternary_weight(layer.weight.detach(), 128)
    torch.testing.assert_close(layer(x), F.linear(xq, wq))
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 8).T @ xq)
    torch.testing.assert_close(x.grad, torch.ones(4, 8) @ wq)


def test_only_hidden_linears_are_ternary():
    cfg, _ = get_recipe("engram-mtp").build("tiny")
    model = GPT(dataclasses.replace(cfg, quant="ternary"))
    ternary = {n for n, m in model.named_modules() if isinstance(m, TernaryLinear)}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - ternary == {"mtp.heads.0", "mtp.heads.1", "mtp.heads.2"}
    assert "blocks.0.engram.w_k" in ternary and "blocks.3.ffn.w_down" in ternary
    assert not isinstance(model.tok_embed, torch.nn.Linear)
