"""Batched, seeded sampling with the model's static KV cache (the fix for seed-spec §10.1).

The original re-ran the whole context for every new token, kept k+1 tokens in its top-k and sampled from an
unseeded RNG. Here:

- `use_kv_cache=True` (default) preallocates the model's static cache (`setup_cache`) and feeds one position
  per step (`forward(start_pos=...)`); `use_kv_cache=False` recomputes the whole prefix every step. Both paths
  consume the same random numbers, so they give the same text up to float rounding (identical in fp32 greedy).
- Logit processing order: repetition penalty, temperature, exact top-k (keeps exactly k), top-p (smallest set
  whose probability reaches p), then one draw from a seeded `torch.Generator`. Temperature 0 is greedy.
  `<pad>` is never sampled (it never occurs in the training streams), nor are ids past the tokenizer's vocab.
- Prompts of different lengths share one batch, in lockstep: the batch is prefilled up to the shortest prompt,
  then every row advances one position per step, and a row whose prompt is not used up yet is fed its own next
  prompt token instead of a sample. Causal attention makes each row's result the same as running it alone.
- An empty prompt starts from `<eos>` (id 1), the separator that precedes every file in training.
- A prompt longer than the context minus `max_new_tokens` is cut from the left (the most recent tokens are
  kept) and flagged `prompt_truncated`; `max_new_tokens` must leave room for at least one prompt token.
- Each sample stops on `<eos>` (finish "eos"), on a stop string (finish "stop"; the text is cut before it) or
  after `max_new_tokens` (finish "length"). Only the generated ids are decoded, with special tokens skipped.
- A model with non-causal (bidirectional wavefield) layers is refused unless `inference_mode="bypass"`, which
  skips those mixers like the original's generator did (seed-spec §3.5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from nanotrain.data.tokenizer import EOS_ID, PAD_ID
from nanotrain.errors import UserError

INFERENCE_MODES = ("refuse", "bypass")

TokenCallback = Callable[[int, int, str], None]
"""Called as `on_token(sample_index, token_id, text_so_far)` for every token a sample generates; `text_so_far`
leaves out a trailing incomplete UTF-8 character (it appears once a later token completes it)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. `top_k=0` and `top_p=1.0` switch those filters off; `temperature=0` is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise UserError(f"--top-k {self.top_k}: must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1] (1 = off)")
        if self.repetition_penalty <= 0:
            raise UserError(f"--repetition-penalty {self.repetition_penalty}: must be > 0 (1 = off)")
        if any(s == "" for s in self.stop):
            raise UserError("--stop: stop strings must not be empty")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Sample:
    """One generated continuation; `text` holds only the generated part (the prompt is kept separately)."""

    prompt: str
    text: str = ""
    n_tokens: int = 0
    finish: str = ""  # "eos" | "stop" | "length" ("" while still running)
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_truncated: bool = False


@dataclass
class Generation:
    """The result of one `generate` call: samples in prompt order plus throughput over the whole call."""

    samples: list[Sample]
    n_tokens: int
    seconds: float
    tok_per_s: float
    inference_mode: str  # "causal" (no layer skipped) | "bypass" (non-causal layers skipped)
    use_kv_cache: bool
    config: SamplingConfig


def resolve_inference_mode(model: torch.nn.Module, mode: str) -> tuple[str, bool]:
    """Check a model may be run causally. Returns (recorded mode, bypass flag) or raises UserError.

    A causal model runs as is ("causal"). A model with bidirectional layers would read future tokens, so it is
    refused, unless `mode == "bypass"`, which skips those layers ("bypass").
    """
    if mode not in INFERENCE_MODES:
        raise UserError(f"--inference-mode {mode!r}: expected one of {', '.join(INFERENCE_MODES)}")
    if model.is_causal:
        return "causal", False
    if mode == "refuse":
        layers = ", ".join(str(i) for i in model.noncausal_layers())
        raise UserError(
            f"model has non-causal (bidirectional wavefield) layers [{layers}]: causal sampling would be wrong; "
            "pass --inference-mode bypass to skip those layers as the original did"
        )
    return "bypass", True


def context_length(model: torch.nn.Module) -> int:
    """The model's context (RoPE table and KV-cache capacity)."""
    return int(model.cfg.max_seq_len)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the exact top-k (exactly k survive, ties broken by index) and outside the top-p set.

    Top-p keeps the smallest prefix of tokens, by decreasing probability, whose total probability reaches `top_p`
    (always at least one token). Works on `[B, V]`; masked entries become -inf.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        values, index = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, values)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the row (prompt or generated): divide positive logits, multiply
    negative ones, so the token always becomes less likely."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, config: SamplingConfig, generator: torch.Generator,
    n_valid: int | None = None,
) -> torch.Tensor:
    """Pick one token per row from `[B, V]` logits (fp32) according to `config`.

    `<pad>` and ids >= `n_valid` (model rows the tokenizer has no token for) are never picked.
    """
    logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    logits[:, PAD_ID] = float("-inf")
    if n_valid is not None:
        logits[:, n_valid:] = float("-inf")
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def encode_prompt(tokenizer, prompt: str, limit: int) -> tuple[list[int], bool]:
    """Prompt ids without special tokens; empty → [<eos>]; longer than `limit` → the last `limit` ids."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [EOS_ID]
    if len(ids) > limit:
        return ids[-limit:], True
    return ids, False


def iter_generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    config: SamplingConfig = SamplingConfig(),
    *,
    use_kv_cache: bool = True,
    inference_mode: str = "refuse",
    batch_size: int = 32,
    on_token: TokenCallback | None = None,
) -> Iterator[list[Sample]]:
    """Generate one continuation per prompt, yielding the (live, partial) samples after every decode step.

    The last value yielded has every sample finished. Use `generate` for the result with throughput.
    """
    _, bypass = resolve_inference_mode(model, inference_mode)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    context = context_length(model)
    if config.max_new_tokens >= context:
        raise UserError(
            f"--max-new-tokens {config.max_new_tokens}: leaves no room for a prompt in the model's "
            f"{context}-token context"
        )
    limit = context - config.max_new_tokens
    samples, encoded = [], []
    for p in prompts:
        ids, cut = encode_prompt(tokenizer, p, limit)
        samples.append(Sample(prompt=p, prompt_tokens=len(ids), prompt_truncated=cut))
        encoded.append(ids)
    if not samples:
        return
    param = next(model.parameters())
    generator = torch.Generator(device=param.device).manual_seed(config.seed)
    # Rows of similar length share a chunk, so little time goes into feeding prompt tokens one by one.
    order = sorted(range(len(samples)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield from _generate_chunk(
            model, tokenizer, [encoded[i] for i in rows], [samples[i] for i in rows], rows, samples,
            config, generator, use_kv_cache, bypass, on_token,
        )


def _generate_chunk(model, tokenizer, prompt_ids, chunk, rows, all_samples, config, generator, use_kv_cache,
                    bypass, on_token) -> Iterator[list[Sample]]:
    param = next(model.parameters())
    device = param.device
    n = len(chunk)
    lengths = torch.tensor([len(p) for p in prompt_ids], device=device)
    shortest, longest = int(lengths.min()), int(lengths.max())
    total = longest + config.max_new_tokens
    tokens = torch.full((n, total), PAD_ID, dtype=torch.long, device=device)
    for r, ids in enumerate(prompt_ids):
        tokens[r, : len(ids)] = torch.tensor(ids, device=device)
    in_prompt = torch.arange(total, device=device)[None, :] < lengths[:, None]
    vocab = int(model.cfg.vocab_size)
    seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)
    if config.repetition_penalty != 1.0:
        seen.scatter_(1, tokens[:, :shortest], True)
        seen[:, PAD_ID] = False
    live = [True] * n
    if use_kv_cache:
        model.setup_cache(n, max_len=total, device=device, dtype=param.dtype)
    try:
        with torch.inference_mode():
            done_to = 0  # positions < done_to are in the cache
            for pos in range(shortest, total):
                if use_kv_cache:
                    out = model(tokens[:, done_to:pos], start_pos=done_to, bypass_noncausal=bypass)
                    done_to = pos
                else:
                    out = model(tokens[:, :pos], bypass_noncausal=bypass)
                picked = next_tokens(out.logits[:, -1].float(), seen, config, generator,
                                     tokenizer.get_vocab_size())
                fed = torch.where(in_prompt[:, pos], tokens[:, pos], picked)
                tokens[:, pos] = fed
                if config.repetition_penalty != 1.0:
                    seen.scatter_(1, fed[:, None], True)
                    seen[:, PAD_ID] = False
                generated = (~in_prompt[:, pos]).tolist()
                fed_list = fed.tolist()
                for r in range(n):
                    if live[r] and generated[r]:
                        live[r] = _extend(chunk[r], fed_list[r], tokenizer, config, on_token, rows[r])
                yield all_samples
                if not any(live):
                    break
    finally:
        if use_kv_cache:
            model.clear_cache()


def streamable_text(text: str) -> str:
    """A sample's text as it may be shown while it is still growing: a byte-level token can end mid-character,
    which decodes to trailing replacement characters until the next tokens complete it, so those are held back
    and every streamed text is a prefix of the final one."""
    return text.rstrip("\ufffd")


def _extend(sample: Sample, token: int, tokenizer, config: SamplingConfig, on_token, index: int) -> bool:
    """Add one generated token to a sample; returns False once the sample is finished."""
    sample.n_tokens += 1
    if token == EOS_ID:
        sample.finish = "eos"
        return False
    sample.token_ids.append(token)
    sample.text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
    if config.stop:
        cuts = [i for i in (sample.text.find(s) for s in config.stop) if i >= 0]
        if cuts:
            sample.text = sample.text[: min(cuts)]
            sample.finish = "stop"
    if on_token is not None:
        on_token(index, token, streamable_text(sample.text))
    if sample.finish:
        return False
    if sample.n_tokens >= config.max_new_tokens:
        sample.finish = "length"
        return False
    return True


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    config: SamplingConfig = SamplingConfig(),
    *,
    use_kv_cache: bool = True,
    inference_mode: str = "refuse",
    batch_size: int = 32,
    on_token: TokenCallback | None = None,
    progress: bool = False,
) -> Generation:
    """Generate one continuation per prompt (repeat a prompt in `prompts` for several samples).

    Same model, prompts, config and batch size → the same texts, run to run. `tok_per_s` counts generated
    tokens (including a final `<eos>`) over the wall time of the whole call, prefill included.
    """
    from tqdm import tqdm

    mode, _ = resolve_inference_mode(model, inference_mode)
    t0 = time.perf_counter()
    samples = [Sample(prompt=p) for p in prompts]
    with tqdm(total=len(samples), desc="sampling", unit="sample", disable=not progress, leave=False) as bar:
        finished = 0
        for samples in iter_generate(
            model, tokenizer, prompts, config, use_kv_cache=use_kv_cache, inference_mode=inference_mode,
            batch_size=batch_size, on_token=on_token,
        ):
            now = sum(1 for s in samples if s.finish)
            bar.update(now - finished)
            finished = now
    seconds = time.perf_counter() - t0
    n_tokens = sum(s.n_tokens for s in samples)
    return Generation(
        samples=samples,
        n_tokens=n_tokens,
        seconds=seconds,
        tok_per_s=n_tokens / seconds if seconds > 0 else 0.0,
        inference_mode=mode,
        use_kv_cache=use_kv_cache,
        config=config,
    )
