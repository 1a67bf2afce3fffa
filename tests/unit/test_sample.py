"""The KV-cached sampler against the recompute path, on real tiny checkpoints; logit filters on exact tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nanoeval
from nanoeval.prompts import SEED_PROMPTS
from nanoeval.sample import SamplingConfig, apply_repetition_penalty, filter_logits, generate
from nanotrain.data.tokenizer import EOS_ID
from nanotrain.errors import UserError
from nanotrain.recipes import RECIPES

CAUSAL_RECIPES = [name for name, r in RECIPES.items() if r.build("tiny")[0].wavefield_mode == "causal"
                  or not r.build("tiny")[0].wavefield_ratio]
PROMPTS = list(SEED_PROMPTS[:5])
GREEDY = SamplingConfig(max_new_tokens=20, temperature=0.0)


@pytest.fixture(scope="module")
def engram(tiny_checkpoint_factory):
    return nanoeval.load(tiny_checkpoint_factory("engram-v1"))


@pytest.fixture(scope="module")
def haar(tiny_checkpoint_factory):
    return nanoeval.load(tiny_checkpoint_factory("haar-v5"))


def texts(gen) -> list[str]:
    return [s.text for s in gen.samples]


# ---------------------------------------------------------------------------------------------- logit filters


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.sum().item() == 2  # the seed's threshold rule would keep 4 here (all ties of the k+1-th value)
    assert kept[0, 0]
    assert torch.equal(filter_logits(logits, top_k=2)[kept], logits[kept])


def test_top_k_zero_or_vocab_keeps_all():
    logits = torch.randn(3, 10)
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True]]


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -0.1), ("top_k", -1),
                                         ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0.0),
                                         ("stop", ("",))])
def test_bad_sampling_settings_are_user_errors(field, value):
    with pytest.raises(UserError):
        SamplingConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- real models


@pytest.mark.parametrize("recipe", CAUSAL_RECIPES)
def test_greedy_kv_cache_matches_recompute(recipe, tiny_checkpoint_factory):
    loaded = nanoeval.load(tiny_checkpoint_factory(recipe))
    assert loaded.model.is_causal
    cached = generate(loaded.model, loaded.tokenizer, PROMPTS, GREEDY)
    recomputed = generate(loaded.model, loaded.tokenizer, PROMPTS, GREEDY, use_kv_cache=False)
    assert texts(cached) == texts(recomputed)
    assert [s.token_ids for s in cached.samples] == [s.token_ids for s in recomputed.samples]
    assert cached.inference_mode == "causal" and cached.use_kv_cache and not recomputed.use_kv_cache


def test_sampled_kv_cache_matches_recompute_with_same_seed(engram):
    config = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    cached = generate(engram.model, engram.tokenizer, PROMPTS, config)
    recomputed = generate(engram.model, engram.tokenizer, PROMPTS, config, use_kv_cache=False)
    assert texts(cached) == texts(recomputed)


def test_seeded_batched_sampling_is_reproducible(engram):
    prompts = [p for p in PROMPTS for _ in range(2)]
    config = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=0, seed=3)
    first = generate(engram.model, engram.tokenizer, prompts, config)
    again = generate(engram.model, engram.tokenizer, prompts, config)
    other = generate(engram.model, engram.tokenizer, prompts, dataclasses.replace(config, seed=4))
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert first.tok_per_s > 0 and first.n_tokens == sum(s.n_tokens for s in first.samples)


def test_prompts_of_different_lengths_batch_like_single_runs(engram):
    prompts = ["fn", SEED_PROMPTS[7], "", SEED_PROMPTS[2], "pub struct A {"]
    together = generate(engram.model, engram.tokenizer, prompts, GREEDY)
    alone = [generate(engram.model, engram.tokenizer, [p], GREEDY).samples[0].text for p in prompts]
    assert texts(together) == alone
    assert [s.prompt for s in together.samples] == prompts  # results come back in prompt order


def test_only_generated_ids_are_decoded(engram):
    gen = generate(engram.model, engram.tokenizer, PROMPTS, GREEDY)
    for s in gen.samples:
        assert s.text == engram.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert s.prompt_tokens == len(engram.tokenizer.encode(s.prompt, add_special_tokens=False).ids)
        assert len(s.token_ids) == s.n_tokens - (s.finish == "eos")


def test_every_sample_stops_at_max_new_tokens(engram):
    gen = generate(engram.model, engram.tokenizer, PROMPTS, SamplingConfig(max_new_tokens=7, temperature=1.0))
    for s in gen.samples:
        assert s.finish in ("eos", "length")
        assert s.n_tokens == 7 if s.finish == "length" else s.n_tokens <= 7


def test_eos_stops_only_its_own_sample(engram):
    """Force <eos> as row 0's third generated token with a hook on the real model's output."""
    calls = []

    def force_eos(_module, _args, out):
        calls.append(1)
        if len(calls) == 3:
            out.logits[0, -1, :] = -1e4
            out.logits[0, -1, EOS_ID] = 1e4
        return out

    prompts = ["fn main() {", "fn main() {"]
    handle = engram.model.register_forward_hook(force_eos)
    try:
        gen = generate(engram.model, engram.tokenizer, prompts, GREEDY)
    finally:
        handle.remove()
    first, second = gen.samples
    assert (first.finish, first.n_tokens, len(first.token_ids)) == ("eos", 3, 2)
    assert (second.finish, second.n_tokens) == ("length", GREEDY.max_new_tokens)


def test_stop_string_cuts_the_text(engram):
    full = generate(engram.model, engram.tokenizer, [PROMPTS[0]], GREEDY).samples[0]
    assert len(full.text) >= 6, full.text
    stop = full.text[3:5]
    cut = generate(engram.model, engram.tokenizer, [PROMPTS[0]],
                   dataclasses.replace(GREEDY, stop=(stop, "never-appears"))).samples[0]
    assert cut.finish == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.n_tokens < GREEDY.max_new_tokens


def test_streaming_callback_sees_every_token(engram):
    seen: list[tuple[int, int, str]] = []
    gen = generate(engram.model, engram.tokenizer, PROMPTS[:2], GREEDY,
                   on_token=lambda i, tok, text: seen.append((i, tok, text)))
    for i, s in enumerate(gen.samples):
        mine = [(tok, text) for j, tok, text in seen if j == i]
        assert [tok for tok, _ in mine] == s.token_ids
        assert mine[-1][1] == s.text


def test_empty_prompt_starts_from_eos(engram):
    s = generate(engram.model, engram.tokenizer, [""], GREEDY).samples[0]
    assert s.prompt_tokens == 1 and s.n_tokens > 0


def test_long_prompt_is_cut_from_the_left(engram):
    context = engram.model_cfg.max_seq_len
    prompt = "let x = 1;\n" * context
    s = generate(engram.model, engram.tokenizer, [prompt], GREEDY).samples[0]
    assert s.prompt_truncated
    assert s.prompt_tokens == context - GREEDY.max_new_tokens
    assert s.n_tokens > 0
    short = generate(engram.model, engram.tokenizer, ["let x = 1;"], GREEDY).samples[0]
    assert not short.prompt_truncated


def test_max_new_tokens_must_leave_room_for_the_prompt(engram):
    too_many = SamplingConfig(max_new_tokens=engram.model_cfg.max_seq_len, temperature=0)
    with pytest.raises(UserError, match="max-new-tokens"):
        generate(engram.model, engram.tokenizer, ["fn"], too_many)


def test_noncausal_model_is_refused_unless_bypassed(haar):
    assert not haar.model.is_causal
    with pytest.raises(UserError, match="inference-mode bypass"):
        generate(haar.model, haar.tokenizer, PROMPTS, GREEDY)
    cached = generate(haar.model, haar.tokenizer, PROMPTS, GREEDY, inference_mode="bypass")
    recomputed = generate(haar.model, haar.tokenizer, PROMPTS, GREEDY, inference_mode="bypass", use_kv_cache=False)
    assert cached.inference_mode == "bypass"
    assert texts(cached) == texts(recomputed)
    with pytest.raises(UserError, match="inference-mode"):
        generate(haar.model, haar.tokenizer, PROMPTS, GREEDY, inference_mode="ignore")


def test_streamed_text_holds_back_an_incomplete_character():
    from nanoeval.sample import Sample, SamplingConfig, _extend

    class ByteTokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    seen = []
    sample = Sample(prompt="")
    config = SamplingConfig(max_new_tokens=10)
    for token in "a€".encode():  # 'a' then the three bytes of '€'
        _extend(sample, token, ByteTokenizer(), config, lambda i, t, text: seen.append(text), 0)
    assert seen == ["a", "a", "a", "a€"]
    assert all(sample.text.startswith(s) for s in seen)


def test_streamable_text_holds_back_a_partial_character():
    """A token can end inside a multi-byte character: the partial decode ends in U+FFFD until the next token
    completes it. Streamed texts drop that tail, so each is a prefix of the final text."""
    from nanoeval.sample import streamable_text

    euro = "€".encode()
    partial = euro[:2].decode("utf-8", errors="replace")
    final = "ab" + euro.decode() + "c"
    assert partial.endswith("\ufffd") and not final.startswith("ab" + partial)
    assert final.startswith(streamable_text("ab" + partial)) and streamable_text("ab" + partial) == "ab"
    assert streamable_text("a\ufffdb") == "a\ufffdb"  # only the growing end is held back
