"""The inference engine: its output against the full forward recomputed per token, on every causal recipe; seeded
sampling, stops, streaming and incremental detokenization on real tiny checkpoints; logit filters on exact
tensors."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import nanoeval
from nanoeval.engine import Detokenizer, Engine, SamplingConfig, apply_repetition_penalty, candidates, pick_tokens
from nanoeval.prompts import SEED_PROMPTS
from nanotrain.data.shards import Dataset
from nanotrain.data.tokenizer import EOS_ID, PAD_ID
from nanotrain.errors import UserError
from nanotrain.model.gpt import GPT
from nanotrain.recipes import RECIPES, get_recipe

CAUSAL_RECIPES = [name for name, r in RECIPES.items() if r.build("tiny")[0].wavefield_mode == "causal"
                  or not r.build("tiny")[0].wavefield_ratio]
# one recipe per decoding path in the default run; the others repeat an architecture (MTP heads or a longer schedule
# change nothing when generating) and run with the slow tests
SAME_DECODER_AS = {"baseline": "baseline-v1", "engram-v2": "engram-v1", "engram-mtp": "engram-v1"}
PROMPTS = list(SEED_PROMPTS[:5])
GREEDY = SamplingConfig(max_new_tokens=20, temperature=0.0)


@pytest.fixture(scope="module")
def engram(tiny_checkpoint_factory):
    return nanoeval.load(tiny_checkpoint_factory("engram-v1"))


@pytest.fixture(scope="module")
def haar(tiny_checkpoint_factory):
    return nanoeval.load(tiny_checkpoint_factory("haar-v5"))


@pytest.fixture(scope="module")
def tokenizer(fixture_dataset):
    return Dataset(fixture_dataset).tokenizer


def generate(loaded, prompts, config=GREEDY, **kw):
    on_token = kw.pop("on_token", None)
    return Engine(loaded.model, loaded.tokenizer, **kw).generate(prompts, config, on_token=on_token)


def texts(gen) -> list[str]:
    return [s.text for s in gen.samples]


def recompute_greedy(model: GPT, prompts: list[list[int]], n_new: int, n_valid: int, bypass: bool = False
                     ) -> list[list[int]]:
    """The plain definition of greedy decoding: the full forward over each whole sequence for every new token
    (rows right-padded; a causal model's logits at a row's last token ignore the padding after it), `<pad>` and
    ids without a token never picked, a row ending at `<eos>`."""
    seqs = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    live = [True] * len(prompts)
    with torch.no_grad():
        for _ in range(n_new):
            width = max(len(s) for s in seqs)
            idx = torch.tensor([s + [PAD_ID] * (width - len(s)) for s in seqs])
            logits = model(idx, bypass_noncausal=bypass).logits
            for r, s in enumerate(seqs):
                if not live[r]:
                    continue
                row = logits[r, len(s) - 1].clone()
                row[PAD_ID] = float("-inf")
                row[n_valid:] = float("-inf")
                token = int(row.argmax())
                out[r].append(token)
                s.append(token)
                live[r] = token != EOS_ID
            if not any(live):
                break
    return out


def engine_ids(gen) -> list[list[int]]:
    """Each sample's generated ids, a final <eos> included (the engine keeps it out of `token_ids`)."""
    return [s.token_ids + [EOS_ID] * (s.finish == "eos") for s in gen.samples]


# ---------------------------------------------------------------------------------------------- logit filters


def kept(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> list[list[int]]:
    """The ids each row may still draw after the filters."""
    values, index = candidates(logits, top_k, top_p)
    ids = torch.arange(logits.shape[-1]).expand_as(logits) if index is None else index
    return [sorted(ids[r][torch.isfinite(values[r])].tolist()) for r in range(logits.shape[0])]


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]])
    (ids,) = kept(logits, top_k=2)
    assert len(ids) == 2 and ids[0] == 0  # the seed's threshold rule would keep 4 here (all ties of the k+1-th)
    values, index = candidates(logits, top_k=2)
    assert torch.equal(values, logits.gather(1, index))


def test_top_k_zero_or_vocab_keeps_all():
    logits = torch.randn(3, 10)
    for k in (0, 10):
        values, index = candidates(logits, top_k=k)
        assert index is None and torch.equal(values, logits)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(logits, top_p=0.8) == [[0, 1]]
    assert kept(logits, top_p=0.81) == [[0, 1, 2]]
    assert kept(logits, top_p=0.1) == [[0]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert kept(shuffled, top_p=0.8) == [[1, 3]]
    assert kept(shuffled, top_k=3, top_p=0.8) == [[1, 3]]


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.8)])
def test_pick_tokens_draws_from_the_filtered_softmax(temperature, top_k, top_p):
    """20,000 rows of the same logits, one draw each: the frequencies match softmax(logits / T) over the tokens the
    filters keep (the rest, and banned ones, never drawn) to within 0.015, ~4 standard deviations; temperature 0
    picks the argmax."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.5, 0.0, -3.0, 4.0]]).expand(20_000, -1)
    banned = torch.zeros(7)
    banned[6] = float("-inf")  # e.g. <pad>: the largest logit, never drawn
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    values, index = candidates((logits[:1, :6] / temperature), top_k, top_p)
    ids = torch.arange(6) if index is None else index[0]
    want = torch.zeros(7)
    want[ids] = values[0].softmax(0)
    got = pick_tokens(logits, config, banned, None, torch.Generator().manual_seed(0))
    freq = torch.bincount(got, minlength=7).float() / got.numel()
    assert (freq - want).abs().max() < 0.015, (freq, want)
    assert freq[want == 0].sum() == 0
    greedy = dataclasses.replace(config, temperature=0.0)
    assert torch.equal(pick_tokens(logits, greedy, banned, None, torch.Generator()), torch.zeros(20_000).long())


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -0.1), ("temperature", float("nan")),
                                         ("temperature", float("inf")), ("top_k", -1), ("top_p", 0.0),
                                         ("top_p", 1.5), ("top_p", float("nan")), ("repetition_penalty", 0.0),
                                         ("repetition_penalty", float("inf")), ("stop", ("",))])
def test_bad_sampling_settings_are_user_errors(field, value):
    with pytest.raises(UserError):
        SamplingConfig(**{field: value})


# ------------------------------------------------------------------- exactness against the plain definition


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SAME_DECODER_AS else r
                                    for r in CAUSAL_RECIPES])
def test_greedy_engine_equals_the_full_forward_recomputed_per_token(recipe, tokenizer):
    """Every causal recipe at its tiny shape (fp32, random weights), 128 new tokens, prompts of 1 to ~30 tokens in
    one batch: the engine's ids are exactly what the full forward picks token by token."""
    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    prompts = ["", "fn", "use std::collections::HashMap;\n\npub fn count(words: &[&str]) -> HashMap<&str, usize> {"]
    config = SamplingConfig(max_new_tokens=128, temperature=0.0)
    gen = Engine(model, tokenizer, batch_size=3).generate(prompts, config)
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids or [EOS_ID] for p in prompts]
    assert len({len(e) for e in encoded}) == 3
    want = recompute_greedy(model, encoded, 128, tokenizer.get_vocab_size())
    assert engine_ids(gen) == want
    assert sum(len(w) for w in want) > 128  # the rows really decoded (a row ending at once would prove little)


@pytest.mark.parametrize("recipe", ["baseline-v1", "engram-v1", "haar-causal", "looplm"])
def test_greedy_rows_at_one_shared_position_equal_the_full_forward(recipe, tokenizer):
    """Prompts of one length decode with one position vector for every row (the caches' slice path, no mask):
    the same ids as the full forward recomputed per token."""
    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(1)
    model = GPT(cfg).eval()
    by_length: dict[int, list[str]] = {}
    for p in SEED_PROMPTS:
        by_length.setdefault(len(tokenizer.encode(p, add_special_tokens=False).ids), []).append(p)
    prompts = max(by_length.values(), key=len)[:2]
    assert len(prompts) == 2
    config = SamplingConfig(max_new_tokens=48, temperature=0.0)
    gen = Engine(model, tokenizer, batch_size=2).generate(prompts, config)
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    want = recompute_greedy(model, encoded, 48, tokenizer.get_vocab_size())
    assert engine_ids(gen) == want
    assert sum(len(w) for w in want) > 48


def test_bypassed_noncausal_model_equals_its_bypassed_full_forward(haar):
    assert not haar.model.is_causal
    with pytest.raises(UserError, match="inference-mode bypass"):
        generate(haar, PROMPTS)
    gen = generate(haar, PROMPTS, inference_mode="bypass")
    encoded = [haar.tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    assert gen.inference_mode == "bypass"
    assert engine_ids(gen) == recompute_greedy(haar.model, encoded, GREEDY.max_new_tokens,
                                               haar.tokenizer.get_vocab_size(), bypass=True)
    with pytest.raises(UserError, match="inference-mode"):
        generate(haar, PROMPTS, inference_mode="ignore")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["baseline-v1", "engram-v1", "haar-causal"])
def test_compiled_decode_step_decodes_what_the_eager_one_does(recipe, tokenizer):
    """The compiled step (Inductor's CPU backend here; CUDA graphs on a GPU) against the eager engine: greedy ids
    equal, and two calls compile nothing new (one graph serves every position and batch)."""
    cfg, _ = get_recipe(recipe).build("tiny")
    cfg.vocab_size, cfg.n_layers, cfg.max_seq_len = tokenizer.get_vocab_size(), 2, 64
    cfg.engram_layers = [0, 1] if cfg.engram_layers else []
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    prompts = ["fn main() {", "", "struct"]
    config = SamplingConfig(max_new_tokens=24, temperature=0.0)
    eager = Engine(model, tokenizer, batch_size=4).generate(prompts, config)
    engine = Engine(model, tokenizer, batch_size=4, compile=True)
    first = engine.generate(prompts, config)
    assert engine.compiled and engine.fallback_reason is None
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = engine.generate(prompts[:2], config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert engine_ids(first) == engine_ids(eager)
    assert engine_ids(again) == engine_ids(eager)[:2]


# ------------------------------------------------------------------------------------ sampling on real models


def test_seeded_batched_sampling_is_reproducible(engram):
    prompts = [p for p in PROMPTS for _ in range(2)]
    config = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=3)
    first = generate(engram, prompts, config)
    again = generate(engram, prompts, config)
    other = generate(engram, prompts, dataclasses.replace(config, seed=4))
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert first.tok_per_s > 0 and first.n_tokens == sum(s.n_tokens for s in first.samples)


def test_repetition_penalty_changes_greedy_output_reproducibly(engram):
    penalized = dataclasses.replace(GREEDY, repetition_penalty=3.0)
    plain, first, again = (generate(engram, PROMPTS, c) for c in (GREEDY, penalized, penalized))
    assert texts(first) == texts(again) and texts(first) != texts(plain)
    for s in first.samples:  # a strong penalty: no token repeats right away
        assert all(a != b for a, b in zip(s.token_ids, s.token_ids[1:]))


def test_prompts_of_different_lengths_batch_like_single_runs(engram):
    prompts = ["fn", SEED_PROMPTS[7], "", SEED_PROMPTS[2], "pub struct A {"]
    together = generate(engram, prompts)
    alone = [generate(engram, [p]).samples[0].text for p in prompts]
    assert texts(together) == alone
    assert [s.prompt for s in together.samples] == prompts  # results come back in prompt order
    small_batches = generate(engram, prompts, batch_size=2)
    assert texts(small_batches) == alone


@pytest.mark.parametrize("n, batch_size, sizes", [(5, 4, [3, 2]), (9, 4, [3, 3, 3]), (8, 4, [4, 4]), (3, 8, [3])])
def test_samples_split_into_equal_batches(engram, n, batch_size, sizes):
    engine = Engine(engram.model, engram.tokenizer, batch_size=batch_size)
    seen = []
    decode = engine._decode_batch

    def spy(prompt_ids, *args):
        seen.append(len(prompt_ids))
        return decode(prompt_ids, *args)

    engine._decode_batch = spy
    gen = engine.generate((PROMPTS * 2)[:n], SamplingConfig(max_new_tokens=2, temperature=0.0))
    assert seen == sizes and len(gen.samples) == n


def test_weights_are_frozen_once_per_call_not_per_batch(engram, monkeypatch):
    import nanotrain.model.frozen as frozen

    entries = []
    real = frozen.frozen_weights

    def counting(model, dtype):
        entries.append(dtype)
        return real(model, dtype)

    monkeypatch.setattr(frozen, "frozen_weights", counting)
    gen = generate(engram, PROMPTS, SamplingConfig(max_new_tokens=3, temperature=0.0), batch_size=2)  # 3 batches
    assert len(gen.samples) == len(PROMPTS) and entries == [torch.float32]
    assert all(m.packed is None for m in engram.model.modules() if isinstance(m, frozen.Linear))  # left on exit


def test_only_generated_ids_are_decoded(engram):
    gen = generate(engram, PROMPTS)
    for s in gen.samples:
        assert s.text == engram.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert s.prompt_tokens == len(engram.tokenizer.encode(s.prompt, add_special_tokens=False).ids)
        assert len(s.token_ids) == s.n_tokens - (s.finish == "eos")


def test_incremental_detokenization_equals_the_tokenizers_decode(engram):
    """Hot random samples are full of byte tokens that end mid-character: the text built token by token must still
    equal decoding all ids at once, for every sample."""
    config = SamplingConfig(max_new_tokens=60, temperature=3.0, top_k=0, seed=5)
    gen = generate(engram, PROMPTS * 4, config)
    detok = Detokenizer(engram.tokenizer)

    def partial(token: int) -> bool:
        try:
            detok.token_bytes[token].decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True

    assert any(partial(t) for s in gen.samples for t in s.token_ids)  # the case worth testing did occur
    for s in gen.samples:
        assert s.text == engram.tokenizer.decode(s.token_ids, skip_special_tokens=True)


def test_detokenizer_bytes_cover_every_token(tokenizer):
    detok = Detokenizer(tokenizer)
    rng = random.Random(0)
    n = tokenizer.get_vocab_size()
    assert detok.token_bytes[PAD_ID] == b"" and detok.token_bytes[EOS_ID] == b""
    for _ in range(200):
        ids = [rng.randrange(n) for _ in range(rng.randrange(1, 12))]
        stream = detok.stream()
        text = "".join(stream.decode(detok.token_bytes[i]) for i in ids) + stream.decode(b"", final=True)
        assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_every_sample_stops_at_max_new_tokens(engram):
    gen = generate(engram, PROMPTS, SamplingConfig(max_new_tokens=7, temperature=1.0))
    for s in gen.samples:
        assert s.finish in ("eos", "length")
        assert s.n_tokens == 7 if s.finish == "length" else s.n_tokens <= 7


def test_eos_stops_only_its_own_sample(engram):
    """Force <eos> as row 0's third generated token with a hook on the real model's output."""
    calls = []

    def force_eos(_module, _args, out):
        calls.append(1)
        if len(calls) == 3:  # the prefill, then two decode steps
            out.logits[0, -1, :] = -1e4
            out.logits[0, -1, EOS_ID] = 1e4
        return out

    prompts = ["fn main() {", "fn main() {"]
    handle = engram.model.register_forward_hook(force_eos)
    try:
        gen = generate(engram, prompts)
    finally:
        handle.remove()
    first, second = gen.samples
    assert (first.finish, first.n_tokens, len(first.token_ids)) == ("eos", 3, 2)
    assert (second.finish, second.n_tokens) == ("length", GREEDY.max_new_tokens)


def test_decoding_stops_once_every_sample_has_ended(engram):
    """All rows end at their first token: the engine runs at most one decode step more (the host reads a step's
    tokens while the next one computes), not max_new_tokens of them."""
    calls = []

    def always_eos(_module, _args, out):
        calls.append(1)
        out.logits[:, -1, :] = -1e4
        out.logits[:, -1, EOS_ID] = 1e4
        return out

    handle = engram.model.register_forward_hook(always_eos)
    try:
        gen = generate(engram, PROMPTS)
    finally:
        handle.remove()
    assert all(s.finish == "eos" and s.n_tokens == 1 for s in gen.samples)
    assert len(calls) <= 3  # prefill + at most two steps


def test_stop_string_cuts_the_text(engram):
    full = generate(engram, [PROMPTS[0]]).samples[0]
    assert len(full.text) >= 6, full.text
    stop = full.text[3:5]
    cut = generate(engram, [PROMPTS[0]], dataclasses.replace(GREEDY, stop=(stop, "never-appears"))).samples[0]
    assert cut.finish == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.n_tokens < GREEDY.max_new_tokens


def test_streaming_callback_sees_every_token(engram):
    seen: list[tuple[int, int, str]] = []
    gen = generate(engram, PROMPTS[:2], on_token=lambda i, tok, text: seen.append((i, tok, text)))
    for i, s in enumerate(gen.samples):
        mine = [(tok, text) for j, tok, text in seen if j == i]
        assert [tok for tok, _ in mine] == s.token_ids
        assert mine[-1][1] == s.text
        assert all(s.text.startswith(text) for _, text in mine)


def test_streamed_text_holds_back_an_incomplete_character(engram):
    """'a' then the three single-byte tokens of '€': the text passed on stays 'a' until the last byte arrives."""
    from nanoeval.engine import Sample as EngineSample
    from nanoeval.engine import _Row

    engine = Engine(engram.model, engram.tokenizer)
    ids = [engine.detok.token_bytes.index(bytes([b])) for b in "a€".encode()]
    seen: list[str] = []
    row = _Row(EngineSample(prompt=""), 0, engine.detok.stream())
    config = SamplingConfig(max_new_tokens=10)
    for token in ids:
        engine._extend(row, token, config, lambda i, t, text: seen.append(text))
    assert seen == ["a", "a", "a", "a€"]
    assert row.sample.text == "a€"


def test_engine_stream_yields_growing_samples_and_can_stop_early(engram):
    steps = Engine(engram.model, engram.tokenizer).stream(["fn main() {"], GREEDY)
    lengths = []
    for samples in steps:
        lengths.append(samples[0].n_tokens)
        if len(lengths) == 5:
            break
    steps.close()
    assert lengths == [1, 2, 3, 4, 5]
    assert engram.model.cache_shape is None  # an eager engine frees the caches when a stream ends


def test_empty_prompt_starts_from_eos(engram):
    s = generate(engram, [""]).samples[0]
    assert s.prompt_tokens == 1 and s.n_tokens > 0


def test_long_prompt_is_cut_from_the_left(engram):
    context = engram.model_cfg.max_seq_len
    prompt = "let x = 1;\n" * context
    s = generate(engram, [prompt]).samples[0]
    assert s.prompt_truncated
    assert s.prompt_tokens == context - GREEDY.max_new_tokens
    assert s.n_tokens > 0
    short = generate(engram, ["let x = 1;"]).samples[0]
    assert not short.prompt_truncated


def test_max_new_tokens_must_leave_room_for_the_prompt(engram):
    too_many = SamplingConfig(max_new_tokens=engram.model_cfg.max_seq_len, temperature=0)
    with pytest.raises(UserError, match="max-new-tokens"):
        generate(engram, ["fn"], too_many)
    with pytest.raises(UserError, match="batch-size"):
        Engine(engram.model, engram.tokenizer, batch_size=0)
