"""Attention pieces (docs/original-runs.md, "Architecture"): RoPE half-split, GQA mapping, SwiGLU width, RMSNorm."""

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
    wq, wk, wv = attn.wqkv.weight.split((32, 16, 16))  # q rows, then k, then v
    q = apply_rope((x @ wq.T).view(2, 6, 4, 8).transpose(1, 2), *rope)
    k = apply_rope((x @ wk.T).view(2, 6, 2, 8).transpose(1, 2), *rope)
    v = (x @ wv.T).view(2, 6, 2, 8).transpose(1, 2)
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
        at = Positions(pos, keys, torch.float32)
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
    w_gate, w_up = ffn.w_gate_up.weight.split(48)  # gate rows, then up rows
    expected = ffn.w_down(torch.nn.functional.silu(x @ w_gate.T) * (x @ w_up.T))
    torch.testing.assert_close(ffn(x), expected)
    assert ffn.w_gate_up.bias is None and ffn.w_gate_up.weight.shape == (96, 16)
    assert ffn.w_gate_up.weight.row_blocks == (48, 48)


def test_rmsnorm_formula_and_dtype():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(4, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_separate_projections_of_older_checkpoints_load_into_the_fused_weights():
    """A state dict with wq/wk/wv and w_gate/w_up (as checkpoints were written before the fusion) loads into the
    fused weights, rows stacked in order, through `load_state_dict` and through the checkpoint loader's helper."""
    from nanotrain.model.fused import fuse_legacy_names, stack_rows
    from nanotrain.model.gpt import GPT

    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=64, max_seq_len=16)
    torch.manual_seed(0)
    model = GPT(cfg)
    legacy = {}
    for name, t in model.state_dict().items():
        if name.endswith("attn.wqkv.weight"):
            for part, rows in zip(("wq", "wk", "wv"), t.split((32, 16, 16))):
                legacy[name.replace("wqkv", part)] = rows.clone()
        elif name.endswith("ffn.w_gate_up.weight"):
            for part, rows in zip(("w_gate", "w_up"), t.chunk(2)):
                legacy[name.replace("w_gate_up", part)] = rows.clone()
        else:
            legacy[name] = t.clone()
    assert not any("wqkv" in n or "w_gate_up" in n for n in legacy)
    fresh = GPT(cfg)
    fresh.load_state_dict(legacy)
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx).logits, model(idx).logits, rtol=0, atol=0)
    fused = fuse_legacy_names(legacy, stack_rows)
    assert set(fused) == set(model.state_dict())
    assert all(torch.equal(fused[n], t) for n, t in model.state_dict().items())
    partial = {k: v for k, v in legacy.items() if not k.endswith("attn.wk.weight")}
    assert "blocks.0.attn.wq.weight" in fuse_legacy_names(partial, stack_rows)  # an incomplete set stays as it is


def test_shared_positions_read_and_write_the_caches_as_per_row_positions_do():
    """A position vector shared by every row (`start` known) takes slices instead of per-row gathers and scatters
    and drops the mask where no key needs it: the caches and the attention output are the same."""
    from nanotrain.model.cache import read_before, write_at

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2)
    attn = Attention(cfg)
    cos, sin = rope_tables(8, 16, 10000.0)
    keys = torch.arange(16)
    x = torch.randn(2, 7, 32)
    outs, bufs = {}, {}
    for shared in (False, True):
        cache = KVCache()
        cache.setup(2, 2, 16, 8, torch.device("cpu"), torch.float32)
        ids = torch.zeros(2, 16, dtype=torch.long)
        steps, reads = [], []
        for lo, hi in ((0, 5), (5, 6), (6, 7)):  # a prefill over exactly its keys, then two single-token steps
            pos = torch.arange(lo, hi)
            at = Positions(pos.expand(2, -1), keys[:hi], torch.float32, lo if shared else None)
            assert at.square_causal == (shared and lo == 0) and at.mask_free == (shared and lo > 0)
            assert (at.bias is None) == at.mask_free
            write_at(ids, 1, at, torch.arange(lo, hi).expand(2, -1) + 100)
            reads.append(read_before(ids, at, 3))
            steps.append(attn(x[:, lo:hi], (cos[lo:hi], sin[lo:hi]), at, cache))
        outs[shared] = torch.cat(steps, dim=1)
        bufs[shared] = (cache.k.clone(), cache.v.clone(), ids, reads)
    torch.testing.assert_close(outs[True], outs[False], atol=1e-6, rtol=1e-5)
    for a, b in zip(bufs[True][:3], bufs[False][:3]):
        assert torch.equal(a, b)
    for a, b in zip(bufs[True][3], bufs[False][3]):
        assert torch.equal(a, b)
    assert bufs[True][3][0].abs().sum() == 0  # before position 0: zeros
    assert bufs[True][3][2].tolist() == [[103, 104, 105]] * 2
