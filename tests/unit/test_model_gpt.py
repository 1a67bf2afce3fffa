"""The assembled GPT: spec parameter counts, tied head, causality, KV-cached decoding, every recipe trains."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanotrain.config import ModelConfig
from nanotrain.errors import UserError
from nanotrain.model import GPT, ModelOutput
from nanotrain.recipes import RECIPES, get_recipe

# docs/original-runs.md, "Shapes": parameter counts (millions)
SPEC_COUNTS = {
    "baseline": ("total", 245.41),
    "baseline-v1": ("total", 258.00),
    "haar-v5": ("total", 250.70),
    "engram-v1": ("excl_tables", 249.62),
}


def tiny(name: str, **changes) -> ModelConfig:
    cfg, _ = get_recipe(name).build("tiny")
    return dataclasses.replace(cfg, **changes)


# Every causal architecture, at tiny scale. Ternary runs in fp64: 8-bit activation rounding turns fp32
# summation-order noise (~1e-7) into occasional whole quantisation steps, which is not a causality/cache bug.
CAUSAL = {
    "baseline": (tiny("baseline"), torch.float32),
    "mhc-seed": (tiny("baseline", mhc_init="seed"), torch.float32),
    "mhc-1-stream": (tiny("baseline", mhc_streams=1), torch.float32),
    "mhc-3-streams": (tiny("baseline", mhc_streams=3), torch.float32),
    "engram": (tiny("engram-v1"), torch.float32),
    "engram-seed-primes": (tiny("engram-v1", engram_primes="seed"), torch.float32),
    "mtp": (tiny("baseline-v1"), torch.float32),
    "wavefield-causal": (tiny("haar-causal"), torch.float32),
    "looplm": (tiny("looplm"), torch.float32),
    "ternary": (tiny("engram-mtp", quant="ternary"), torch.float64),
    "ternary-wavefield": (tiny("haar-causal", quant="ternary"), torch.float64),
}


def build(cfg: ModelConfig, dtype=torch.float32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).to(dtype).eval()


@pytest.mark.parametrize("name", sorted(SPEC_COUNTS))
def test_full_scale_parameter_counts_match_spec(name):
    cfg, _ = get_recipe(name).build("full")
    with torch.device("meta"):
        model = GPT(cfg)
    key, millions = SPEC_COUNTS[name]
    counts = model.param_counts()
    assert abs(counts[key] / 1e6 - millions) / millions < 0.01, counts
    if name == "engram-v1":
        assert counts["engram_tables"] == 2 * 8 * 10007 * 128
        assert counts["total"] == counts["excl_tables"] + counts["engram_tables"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_at_full_and_small_scale_on_meta(name):
    for scale in ("full", "small"):
        cfg, _ = get_recipe(name).build(scale)
        with torch.device("meta"):
            model = GPT(cfg)
        assert model.param_counts()["total"] > 0


@pytest.mark.parametrize("name", ["baseline-v1", "haar-v5", "engram-v1", "looplm"])
def test_full_scale_forward_shapes_on_meta(name):
    cfg, _ = get_recipe(name).build("full")
    with torch.device("meta"):
        out = GPT(cfg)(torch.zeros(2, 16, dtype=torch.long))
    assert out.logits.shape == (2, 16, cfg.vocab_size)
    assert [t.shape for t in out.mtp_logits] == [(2, 16, cfg.vocab_size)] * cfg.mtp_heads
    assert len(out.exit_probs) == cfg.loop_count


def test_head_is_tied_and_state_dict_saves_without_shared_storage(tmp_path):
    model = build(tiny("baseline"))
    names = [n for n, _ in model.named_parameters()]
    big = [n for n, p in model.named_parameters() if p.shape[0] == model.cfg.vocab_size]
    assert big == ["tok_embed.weight"]
    assert {"norm_final.weight", "blocks.0.attn.wqkv.weight", "blocks.0.ffn.w_gate_up.weight"} <= set(names)
    idx = torch.randint(0, 4096, (1, 8))
    before = model(idx).logits
    with torch.no_grad():
        model.tok_embed.weight[:, 0] += 1.0  # the head reads the same matrix: every logit moves
    assert (model(idx).logits - before).abs().min() > 0
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    assert set(load_file(tmp_path / "m.safetensors")) == set(model.state_dict())
    assert not any("cache" in k or "rope" in k for k in model.state_dict())


def test_init_is_normal_002_for_embedding_and_hidden_linears():
    model = build(tiny("baseline"))
    assert abs(model.tok_embed.weight.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].ffn.w_gate_up.weight.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].attn.wqkv.weight.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].attn.wo.weight.std().item() - 0.02) < 0.001
    assert torch.all(model.norm_final.weight == 1)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_future_tokens_never_change_past_logits(name):
    cfg, dtype = CAUSAL[name]
    model = build(cfg, dtype)
    assert model.is_causal and model.noncausal_layers() == []
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 40), generator=gen)
    changed = idx.clone()
    changed[:, 25:] = torch.randint(0, cfg.vocab_size, (2, 15), generator=gen)
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert (a.logits[:, :25] - b.logits[:, :25]).abs().max() <= 1e-6
    assert (a.logits[:, 25:] - b.logits[:, 25:]).abs().max() > 1e-3  # the check can see a change
    for la, lb in zip(a.mtp_logits, b.mtp_logits):
        assert (la[:, :25] - lb[:, :25]).abs().max() <= 1e-6


def test_causality_check_flags_the_bidirectional_wavefield():
    model = build(tiny("haar-v5"))
    assert not model.is_causal
    assert model.noncausal_layers() == [1, 3, 5]
    idx = torch.randint(0, 4096, (2, 40))
    changed = idx.clone()
    changed[:, 25:] = (changed[:, 25:] + 1) % 4096
    with torch.no_grad():
        leak = (model(idx).logits[:, :25] - model(changed).logits[:, :25]).abs().max()
        assert leak > 1e-4
        bypass = (model(idx, bypass_noncausal=True).logits[:, :25]
                  - model(changed, bypass_noncausal=True).logits[:, :25]).abs().max()
    assert bypass <= 1e-6


def _decode(model: GPT, idx: torch.Tensor, prefill: int, chunk: int, **kw) -> torch.Tensor:
    """Prefill `prefill` tokens, then feed the rest `chunk` tokens at a time through the caches."""
    model.setup_cache(idx.shape[0], max_len=64)
    parts = [model(idx[:, :prefill], torch.arange(prefill), **kw).logits]
    for pos in range(prefill, idx.shape[1], chunk):
        part = idx[:, pos:pos + chunk]
        parts.append(model(part, torch.arange(pos, pos + part.shape[1]), **kw).logits)
    return torch.cat(parts, dim=1)


def _decode_staggered(model: GPT, idx: torch.Tensor, starts: list[int], steps: int) -> torch.Tensor:
    """Row b prefilled with its first starts[b] tokens (one right-padded call), then fed one token per step at its
    own position: logits [B, steps, V] of positions starts[b] .. starts[b] + steps - 1."""
    b = idx.shape[0]
    model.setup_cache(b, max_len=64)
    width = max(starts)
    model(idx[:, :width], torch.arange(width))  # positions past a row's start hold tokens it overwrites
    pos = torch.tensor(starts)[:, None]
    out = []
    for i in range(steps):
        out.append(model(idx.gather(1, pos), pos, kv_len=width + i + 1).logits[:, 0])
        pos = pos + 1
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_kv_cached_decoding_equals_full_forward(name):
    cfg, dtype = CAUSAL[name]
    model = build(cfg, dtype)
    idx = torch.randint(0, cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx).logits
        one_by_one = _decode(model, idx, prefill=12, chunk=1)
        chunks = _decode(model, idx, prefill=5, chunk=7)
        staggered = _decode_staggered(model, idx, starts=[3, 11], steps=15)
        last = model(idx[:, :20], torch.arange(20), logits_at=torch.tensor([19, 7])).logits
    assert (one_by_one - full).abs().max() <= 1e-5
    assert (chunks - full).abs().max() <= 1e-5
    assert (staggered[0] - full[0, 3:18]).abs().max() <= 1e-5
    assert (staggered[1] - full[1, 11:26]).abs().max() <= 1e-5
    assert last.shape == (2, 1, cfg.vocab_size)
    assert (last[:, 0] - full[[0, 1], [19, 7]]).abs().max() <= 1e-5
    model.clear_cache()
    with pytest.raises(RuntimeError, match="setup_cache"):
        model(idx[:, :1], torch.tensor([0]))


def test_bypassed_bidirectional_model_decodes_like_its_bypassed_forward():
    model = build(tiny("haar-v5"))
    idx = torch.randint(0, 4096, (1, 20))
    with torch.no_grad():
        with pytest.raises(UserError, match="bypass_noncausal"):
            model.setup_cache(1, 64)
            model(idx, torch.arange(idx.shape[1]))
        full = model(idx, bypass_noncausal=True).logits
        cached = _decode(model, idx, prefill=8, chunk=1, bypass_noncausal=True)
    assert (cached - full).abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_forward_backward_every_recipe_at_tiny_scale(name):
    cfg, _ = get_recipe(name).build("tiny")
    model = build(cfg).double()  # fp64, so the one structurally zero gradient below is zero to ~1e-16
    model.train()
    idx = torch.randint(0, cfg.vocab_size, (2, 33))
    out = model(idx[:, :-1])
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 32, cfg.vocab_size)
    assert len(out.exit_probs) == cfg.loop_count
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx[:, 1:].flatten())
    loss = loss + sum(lg.float().mean() for lg in out.mtp_logits)
    loss.backward()
    unused = ("omega", "alpha_raw", "phi", "exit_gate.weight", "exit_gate.bias")
    # The last sub-layer's stream mix is followed by the stream mean, which any doubly stochastic mix preserves.
    last = f"{'local_after' if cfg.loop_count else 'blocks'}.{(2 if cfg.loop_count else cfg.n_layers) - 1}"
    # Its gradient cancels analytically; the matrix-product form of mHC sums in another order, so it is zero up to
    # rounding: in fp64, at least 1e6 times smaller than the smallest gradient of any other mix logit.
    no_grad = f"{last}.mhc_ffn.alpha_logit"
    grads = {pname: p.grad for pname, p in model.named_parameters() if p.grad is not None}
    others = [g.abs().max() for pname, g in grads.items() if pname.endswith("alpha_logit") and pname != no_grad]
    for pname, p in model.named_parameters():
        if pname.endswith(unused):
            assert p.grad is None, pname
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            if pname == no_grad:
                assert p.grad.abs().max() <= 1e-6 * min(others), (pname, p.grad, min(others))
            else:
                assert p.grad.abs().sum() > 0, pname


def test_user_mistakes_raise_user_error():
    model = build(tiny("baseline"))
    with pytest.raises(UserError, match="max_seq_len"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(UserError, match="max_seq_len"):
        model.setup_cache(1, max_len=1000)
    with pytest.raises(UserError, match="n_kv_heads"):
        GPT(tiny("baseline", n_kv_heads=3))
    with pytest.raises(UserError, match="engram_layers"):
        GPT(tiny("baseline", engram_layers=[6]))
    with pytest.raises(UserError, match="wavefield_mode"):
        GPT(tiny("haar-v5", wavefield_mode="sideways"))


def test_after_optimizer_step_clamps_mixing_logits_in_place():
    model = build(tiny("baseline"))
    with torch.no_grad():
        model.blocks[0].mhc_attn.alpha_logit.fill_(7.0)
        model.blocks[1].mhc_ffn.alpha_logit.fill_(float("nan"))
        model.blocks[2].mhc_ffn.alpha_logit.fill_(-9.0)
    ptr = model.blocks[0].mhc_attn.alpha_logit.data_ptr()
    model.after_optimizer_step()
    assert model.blocks[0].mhc_attn.alpha_logit.item() == 3.0
    assert model.blocks[1].mhc_ffn.alpha_logit.item() == 0.0
    assert model.blocks[2].mhc_ffn.alpha_logit.item() == -3.0
    assert model.blocks[0].mhc_attn.alpha_logit.data_ptr() == ptr
    # later calls reuse the module list and the flat buffer: still every sub-layer, inf reset to 0 like NaN
    with torch.no_grad():
        model.blocks[0].mhc_attn.alpha_logit.fill_(float("inf"))
        model.blocks[-1].mhc_ffn.alpha_logit.fill_(float("-inf"))
        model.blocks[1].mhc_attn.alpha_logit.fill_(-2.5)
    model.after_optimizer_step()
    assert model.blocks[0].mhc_attn.alpha_logit.item() == 0.0
    assert model.blocks[-1].mhc_ffn.alpha_logit.item() == 0.0
    assert model.blocks[1].mhc_attn.alpha_logit.item() == -2.5
    assert model.blocks[2].mhc_ffn.alpha_logit.item() == -3.0
