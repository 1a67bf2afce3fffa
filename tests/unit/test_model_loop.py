"""LoopLM (docs/original-runs.md): one shared block looped, no RoPE inside the loop, ExitGate computed, cache per
loop."""

import dataclasses

import pytest
import torch

from nanotrain.errors import UserError
from nanotrain.model import GPT
from nanotrain.recipes import get_recipe


def loop_model(loops: int = 3) -> GPT:
    cfg, _ = get_recipe("looplm").build("tiny")
    cfg = dataclasses.replace(cfg, dim=64, n_heads=4, n_kv_heads=2, vocab_size=101, max_seq_len=32,
                              loop_count=loops, loop_local_before=1, loop_local_after=1, n_layers=loops + 2)
    torch.manual_seed(0)
    return GPT(cfg).eval()


def test_structure_shares_one_block_and_keeps_a_kv_cache_per_iteration():
    model = loop_model(3)
    names = [n for n, _ in model.named_parameters()]
    assert "local_before.0.attn.wqkv.weight" in names and "local_after.0.ffn.w_gate_up.weight" in names
    assert sum(n.startswith("shared_loop.attn.wqkv") for n in names) == 1
    assert {"shared_loop.g_qk.weight", "shared_loop.g_ffn.weight", "shared_loop.exit_gate.weight",
            "shared_loop.exit_gate.bias"} <= set(names)
    assert len(model.shared_loop.kv_caches) == 3
    idx = torch.randint(0, 101, (2, 12))
    out = model(idx)
    assert len(out.exit_probs) == 3 and all(0 < p.item() < 1 for p in out.exit_probs)
    model.setup_cache(2, 32)
    model(idx[:, :5], torch.arange(5))
    k = [c.k[:, :, :5] for c in model.shared_loop.kv_caches]
    assert not torch.equal(k[0], k[1]) and not torch.equal(k[1], k[2])


def test_more_loops_change_the_output_with_the_same_weights():
    a, b = loop_model(2), loop_model(3)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        assert (a(idx).logits - b(idx).logits).abs().max() > 1e-4


def test_shared_block_has_no_rope():
    model = loop_model(2)
    block = model.shared_loop
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        # without positions, attention over identical tokens is the same at every position
        same = x[:, :1].expand(1, 6, 64)
        out = block.attn(same, None)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))


def test_depth_must_add_up():
    cfg, _ = get_recipe("looplm").build("tiny")
    with pytest.raises(UserError, match="n_layers"):
        GPT(dataclasses.replace(cfg, loop_count=5))
