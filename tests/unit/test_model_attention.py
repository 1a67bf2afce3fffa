"""Attention pieces (seed-spec §2.4-2.5): RoPE half-split, GQA mapping, SwiGLU width, RMSNorm."""

import math

import torch

from nanotrain.config import ModelConfig
from nanotrain.model.attention import Attention, KVCache, apply_rope, rope_tables
from nanotrain.model.cache import Positions
from nanotrain.model.mlp import SwiGLU, ffn_hidden_dim
from nanotrain.model.norm import RMSNorm


def test_rope_uses_half_split_pairs_and_theta_10000():
    cos, sin = rope_tables(8, 16, 10000.0)
    x = torch.randn(1, 1, 16, 8)
    out = apply_rope(x, cos, sin)
    p, i = 5, 1
    angle = p * 10000.0 ** (-2 * i / 8)
    a, b = x[0, 0, p, i], x[0, 0, p, i + 4]
    assert math.isclose(out[0, 0, p, i].item(), (a * math.cos(angle) - b * math.sin(angle)).item(), abs_tol=1e-5)
    assert math.isclose(out[0, 0, p, i + 4].item(), (a * math.sin(angle) + b * math.cos(angle)).item(), abs_tol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    # scores depend on the offset only
    q, k = torch.randn(8), torch.randn(8)
    qs, ks = q.expand(1, 1, 16, 8), k.expand(1, 1, 16, 8)
    rq, rk = apply_rope(qs, cos, sin)[0, 0], apply_rope(ks, cos, sin)[0, 0]
    assert math.isclose((rq[7] @ rk[4]).item(), (rq[10] @ rk[7]).item(), abs_tol=1e-4)


def test_gqa_maps_query_head_h_to_kv_head_h_div_group_with_a_causal_mask():
    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    attn = Attention(cfg)
    x = torch.randn(2, 6, 32)
    cos, sin = rope_tables(8, 16, 10000.0)
    rope = (cos[:6], sin[:6])
    q = apply_rope(attn.wq(x).view(2, 6, 4, 8).transpose(1, 2), *rope)
    k = apply_rope(attn.wk(x).view(2, 6, 2, 8).transpose(1, 2), *rope)
    v = attn.wv(x).view(2, 6, 2, 8).transpose(1, 2)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(attn(x, rope), expected, atol=1e-5, rtol=1e-4)
    cache = KVCache()
    cache.setup(2, 2, 16, 8, torch.device("cpu"), torch.float32)
    keys = torch.arange(16)

    def cached(part: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        pos = pos.expand(2, -1)
        at = Positions.make(pos, keys, torch.float32)
        return attn(part, (cos[pos][:, None], sin[pos][:, None]), at, cache)

    step = torch.cat([cached(x[:, :4], torch.arange(4)), cached(x[:, 4:], torch.arange(4, 6))], dim=1)
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-4)


def test_swiglu_width_and_formula():
    assert ffn_hidden_dim(1024, 3.0, 128) == 3072
    assert ffn_hidden_dim(256, 3.0, 128) == 768
    assert ffn_hidden_dim(300, 2.5, 128) == 768
    cfg = ModelConfig(dim=16, ffn_mult=3.0, ffn_multiple_of=8)
    ffn = SwiGLU(cfg)
    x = torch.randn(3, 16)
    expected = ffn.w_down(torch.nn.functional.silu(ffn.w_gate(x)) * ffn.w_up(x))
    torch.testing.assert_close(ffn(x), expected)
    assert ffn.w_gate.bias is None and ffn.w_gate.weight.shape == (48, 16)


def test_rmsnorm_formula_and_dtype():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(4, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
