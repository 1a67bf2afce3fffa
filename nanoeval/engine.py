"""The inference engine: every command that generates text (`score`, `generate`, the demo, the benchmarks) runs
through one `Engine`.

How a call runs:
- Prompts are encoded without special tokens (an empty prompt starts from `<eos>`, the separator before every
  training file; a prompt longer than the context minus `max_new_tokens` is cut from the left and flagged
  `prompt_truncated`), sorted by length and decoded in batches of at most `batch_size` rows, all of one size
  (give or take a row): 270 prompts at batch size 128 run as three batches of 90, not 128 + 128 + 14, since a
  decode step over few rows costs nearly what one over many does.
- Prefill: one cached forward over the batch, prompts right-padded to the longest one, each row's logits taken at
  its own last prompt token (`GPT.forward(idx, input_pos, logits_at=...)`). Padding positions get cache entries
  that a row overwrites before it can read them (a query at position p reads positions <= p only).
- Decode: one token per row per step, every row at its own position (`input_pos` [B, 1]); the step's shapes
  never change, so on a GPU it is compiled once and replayed as a CUDA graph. Eager steps whose rows all sit at
  one position (one prompt, or prompts of one length) pass a single position vector, and the model's caches then
  use slices and no attention mask (`nanotrain.model.cache`).
- Sampling runs on the device, in this order: repetition penalty (CTRL style, on tokens already in the row),
  `<pad>` and ids the tokenizer lacks masked, temperature (0 = greedy argmax), exact top-k (exactly k survive),
  top-p (the smallest set reaching p), then one draw per row among the kept candidates by the exponential race
  (argmax of p_i / E_i with E_i ~ Exp(1): a draw from p) with a `torch.Generator` seeded by
  `SamplingConfig.seed`. Same model, prompts,
  config and batch size: the same texts, run to run.
- The host reads each step's tokens while the device computes the next step (at most one step of lag) and
  detokenizes incrementally: a byte-level BPE token is a fixed byte string, so a row's text grows by its bytes
  through an incremental UTF-8 decoder, which holds back a character until its last byte arrives. A sample
  ends on `<eos>` (finish "eos"), a stop string (finish "stop", the text cut before it) or `max_new_tokens`
  (finish "length"); the batch stops once every row has ended.
- A model with bidirectional (non-causal) wavefield layers is refused unless `inference_mode="bypass"`, which
  skips those mixers as the original's generator did; held-out loss records the same mode.

Eager or compiled: `compile=None` compiles the decode step on CUDA (CUDA graphs) and runs it eagerly on a CPU,
where compiling takes longer than a scoring run's whole decode (benchmarks/README.md has the numbers). Eager
prefill and decode run inside `nanotrain.model.frozen.frozen_weights`: mHC's per-sub-layer gains are computed once
per call and, on a CPU in fp32, the linear weights are packed once per call for oneDNN's faster matrix products.
A compile that fails falls back to eager decoding and says why in `fallback_reason`.
"""

from __future__ import annotations

import codecs
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch

from nanotrain.data.tokenizer import EOS_ID, PAD_ID
from nanotrain.errors import UserError

INFERENCE_MODES = ("refuse", "bypass")

TokenCallback = Callable[[int, int, str], None]
"""Called as `on_token(sample_index, token_id, text_so_far)` for every token a sample generates (`<eos>`
excluded); `text_so_far` leaves out a trailing incomplete UTF-8 character (it appears once a later token
completes it), so every text passed is a prefix of the final one."""


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
        from nanoeval.inputs import check_sampling_numbers

        object.__setattr__(self, "stop", tuple(self.stop))
        check_sampling_numbers(self.temperature, self.top_p, self.repetition_penalty)
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
    """The result of one `Engine.generate` call: samples in prompt order plus throughput over the whole call."""

    samples: list[Sample]
    n_tokens: int
    seconds: float
    tok_per_s: float
    inference_mode: str  # "causal" (no layer skipped) | "bypass" (non-causal layers skipped)
    config: SamplingConfig
    compiled: bool = False
    cuda_graphs: bool = False


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
    """The model's context (RoPE table and cache capacity)."""
    return int(model.cfg.max_seq_len)


def encode_prompt(tokenizer, prompt: str, limit: int, eos_id: int = EOS_ID) -> tuple[list[int], bool]:
    """Prompt ids without special tokens; empty -> [<eos>]; longer than `limit` -> the last `limit` ids."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [eos_id]
    if len(ids) > limit:
        return ids[-limit:], True
    return ids, False


# ------------------------------------------------------------------------------------------------- sampling

def candidates(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens a draw may pick from logits [B, V]: (their logits, their ids), ids None for all V in order.

    Top-k keeps exactly k (ties broken by index, as `topk` breaks them); top-p keeps the smallest prefix of tokens,
    by decreasing probability, whose total probability reaches `top_p` (always at least one). Dropped candidates
    get -inf. Working on the k candidates keeps a draw's random numbers to k per row, not the vocabulary."""
    index = None
    if 0 < top_k < logits.shape[-1]:
        logits, index = logits.topk(top_k, dim=-1)  # sorted, largest first
    elif top_p < 1.0:
        logits, index = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        logits = logits.masked_fill(mass_before >= top_p, float("-inf"))
    return logits, index


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the row: divide positive logits, multiply negative ones, so the
    token always becomes less likely."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def pick_tokens(logits: torch.Tensor, config: SamplingConfig, banned: torch.Tensor, seen: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [B, V], on the device (no host sync). `banned` [V] is -inf where a token may
    never be picked and 0 elsewhere; `seen` [B, V] marks the tokens the repetition penalty applies to."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    logits = logits + banned
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    values, index = candidates(logits / config.temperature, config.top_k, config.top_p)
    probs = values.softmax(dim=-1)
    race = torch.rand(probs.shape, generator=generator, device=probs.device).log_().neg_()  # Exp(1)
    choice = (probs / race).argmax(dim=-1)
    return choice if index is None else index.gather(-1, choice[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------ detokenization

def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: the character that stands for each byte in a token string. Printable Latin-1
    bytes stand for themselves; the other 68 bytes map, in order, to the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Detokenizer:
    """Token ids -> text, one token at a time: each id's bytes (special tokens: none) are fed to a per-row
    incremental UTF-8 decoder. The text equals `tokenizer.decode(ids, skip_special_tokens=True)`."""

    def __init__(self, tokenizer) -> None:
        decoder = getattr(tokenizer, "decoder", None)
        if decoder is None or type(decoder).__name__ != "ByteLevel":
            raise UserError("tokenizer: the engine needs a byte-level BPE tokenizer (nanolab datasets make one)")
        alphabet = _byte_alphabet()
        specials = set(tokenizer.get_added_tokens_decoder())
        self.token_bytes: list[bytes] = []
        for i in range(tokenizer.get_vocab_size()):
            token = tokenizer.id_to_token(i)
            if i in specials or token is None:
                self.token_bytes.append(b"")
            else:
                self.token_bytes.append(bytes(alphabet[c] for c in token))

    @staticmethod
    def stream() -> codecs.IncrementalDecoder:
        """A fresh per-row decoder: `decode(piece)` returns the completed characters, `decode(b"", final=True)`
        the rest (an incomplete character becomes U+FFFD, as in the tokenizer's own decode)."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")


@dataclass
class _Row:
    """Host-side state of one sample while it decodes."""

    sample: Sample
    index: int  # position in the caller's prompt list
    utf8: codecs.IncrementalDecoder
    live: bool = True


# ---------------------------------------------------------------------------------------------------- engine

class Engine:
    """Generates text from a nanolab `GPT` (see the module docstring). One engine per model; not thread-safe.
    `eos_id`/`pad_id`: the tokenizer's `<eos>` and `<pad>` ids (nanolab's by default; a transformers model's own
    through `nanoeval.hf`; `pad_id` None: the tokenizer has no pad token)."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, inference_mode: str = "refuse",
                 compile: bool | None = None, batch_size: int = 32, eos_id: int = EOS_ID,
                 pad_id: int | None = PAD_ID) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mode, self.bypass = resolve_inference_mode(model, inference_mode)
        self.batch_size = batch_size
        self.eos_id, self.pad_id = eos_id, pad_id
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.detok = Detokenizer(tokenizer)
        n_valid = tokenizer.get_vocab_size()
        banned = torch.zeros(int(model.cfg.vocab_size), device=self.device)
        if pad_id is not None:
            banned[pad_id] = float("-inf")
        banned[n_valid:] = float("-inf")  # model rows the tokenizer has no token for
        self.banned = banned
        self.compiled = False
        self.cuda_graphs = False
        self.fallback_reason: str | None = None
        self.compile = self.device.type == "cuda" if compile is None else compile  # asked for; `compiled`: done
        self._step_fn: Callable | None = None
        self._caches: torch.Tensor | None = None  # the model's cache_positions when this engine made its caches

    # -- the model calls

    def _eager_step(self, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        """Logits [B, V] of one decode step: tokens [B, 1] at positions pos [B, 1], all below `kv_len`."""
        return self.model(tokens, pos, bypass_noncausal=self.bypass, kv_len=kv_len).logits[:, 0]

    def _cache_shape(self, rows: int, length: int) -> tuple[int, int]:
        """The caches a batch needs: eager sizes them to the batch; compiled keeps one shape (the batch size and
        the whole context) so the compiled step never sees another."""
        if self.compile:
            return self.batch_size, context_length(self.model)
        return rows, length

    def _setup_caches(self, shape: tuple[int, int]) -> None:
        """Make the model's caches for `shape`, unless this engine's own caches of that shape are still in place
        (another engine or `setup_cache` call may have replaced them: a compiled step must not keep writing
        tensors the model no longer holds)."""
        if self._step_fn is not None and self.model.cache_positions is self._caches and self.model.cache_shape == shape:
            return  # (a step is only made after this engine's caches: `_caches` is set then)
        self.model.setup_cache(shape[0], shape[1], device=self.device, dtype=self.dtype)
        self._caches = self.model.cache_positions
        if self.compile:
            for buf in self.model.buffers():
                if buf is not None:
                    torch._dynamo.mark_static_address(buf)
        self._step_fn = None  # new cache tensors: (re)build the step for them

    def _step(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The decode step for the current caches: compiled once when asked for (falls back to eager)."""
        if self._step_fn is not None:
            return self._step_fn
        self._step_fn = self._eager_step
        if self.compile and self.fallback_reason is None:
            cuda = self.device.type == "cuda"
            from torch._dynamo.utils import counters

            skips = counters["inductor"]["cudagraph_skips"]
            try:
                compiled = torch.compile(self._eager_step, mode="reduce-overhead" if cuda else None, fullgraph=True)
                b = self.batch_size
                with torch.inference_mode():  # as `_decode_batch` calls it: no guard fails on the first real call
                    warm = torch.full((b, 1), self.eos_id, dtype=torch.long, device=self.device)
                    for p in (1, 2, 3):  # compiles, then (on CUDA) records the graph; the caches are rewritten later
                        if cuda:
                            torch.compiler.cudagraph_mark_step_begin()
                        compiled(warm, torch.full((b, 1), p, dtype=torch.long, device=self.device))
                self._step_fn = compiled
                self.compiled = True
                self.cuda_graphs = cuda and counters["inductor"]["cudagraph_skips"] == skips
            except Exception as e:  # any compiler/backend failure: decoding must still work
                self.fallback_reason = f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return self._step_fn

    # -- public API

    def generate(self, prompts: Sequence[str], config: SamplingConfig = SamplingConfig(), *,
                 on_token: TokenCallback | None = None, progress: bool = False) -> Generation:
        """One continuation per prompt (repeat a prompt for several samples). `tok_per_s` counts generated tokens
        (a final `<eos>` included) over the wall time of the whole call, prefill included."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        samples: list[Sample] = []
        # the bar counts token slots (samples x max_new_tokens); a sample that ends early fills its remaining slots
        with tqdm(total=len(prompts) * config.max_new_tokens, desc="sampling", unit="tok", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            done = 0
            for samples in self.stream(prompts, config, on_token=on_token):
                now = sum(config.max_new_tokens if s.finish else s.n_tokens for s in samples)
                bar.update(now - done)
                done = now
        seconds = time.perf_counter() - t0
        n_tokens = sum(s.n_tokens for s in samples)
        return Generation(samples=samples, n_tokens=n_tokens, seconds=seconds,
                          tok_per_s=n_tokens / seconds if seconds > 0 else 0.0, inference_mode=self.mode,
                          config=config, compiled=self.compiled, cuda_graphs=self.cuda_graphs)

    def stream(self, prompts: Sequence[str], config: SamplingConfig = SamplingConfig(), *,
               on_token: TokenCallback | None = None) -> Iterator[list[Sample]]:
        """Yield the (live, partial) samples, in prompt order, after every decode step; the last value has every
        sample finished. Closing the iterator early stops decoding."""
        from nanotrain.model.frozen import frozen_weights

        context = context_length(self.model)
        if config.max_new_tokens >= context:
            raise UserError(f"--max-new-tokens {config.max_new_tokens}: leaves no room for a prompt in the "
                            f"model's {context}-token context")
        limit = context - config.max_new_tokens
        samples, encoded = [], []
        for p in prompts:
            ids, cut = encode_prompt(self.tokenizer, p, limit, self.eos_id)
            samples.append(Sample(prompt=p, prompt_tokens=len(ids), prompt_truncated=cut))
            encoded.append(ids)
        if not samples:
            return
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        order = sorted(range(len(samples)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        n_batches = -(-len(order) // self.batch_size)
        per_batch = -(-len(order) // n_batches)  # batches of equal size: no short last batch with the same step cost
        with ExitStack() as stack:  # `freeze`: enter frozen_weights once (the first eager batch) for the whole call
            freeze = functools.cache(lambda: stack.enter_context(frozen_weights(self.model, self.dtype)))
            for start in range(0, len(order), per_batch):
                chunk = order[start:start + per_batch]
                rows = [_Row(samples[i], i, self.detok.stream()) for i in chunk]
                for _ in self._decode_batch([encoded[i] for i in chunk], rows, config, generator, on_token, freeze):
                    yield samples

    def _decode_batch(self, prompt_ids: list[list[int]], rows: list[_Row], config: SamplingConfig,
                      generator: torch.Generator, on_token: TokenCallback | None,
                      freeze: Callable[[], object]) -> Iterator[None]:
        """Decode one batch. An eager batch calls `freeze()`, which enters `frozen_weights` for the rest of the
        `stream` call the first time, so the weights are packed once per call, not once per batch."""
        n, dev = len(rows), self.device
        lengths = [len(p) for p in prompt_ids]
        longest = max(lengths)
        shape = self._cache_shape(n, longest + config.max_new_tokens)
        b = shape[0]
        prompt = torch.full((b, longest), self.eos_id if self.pad_id is None else self.pad_id, dtype=torch.long)
        for r, ids in enumerate(prompt_ids):
            prompt[r, :len(ids)] = torch.tensor(ids)
        lengths += [1] * (b - n)  # compiled: spare rows decode from a one-token prompt, their output unused
        prompt[n:, 0] = self.eos_id
        self._setup_caches(shape)  # (normal tensors, like the ones a compiled step was warmed up with)
        step = self._step()
        eager = not self.compiled
        cuda = dev.type == "cuda"
        pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        try:
            if eager:
                freeze()
            with torch.inference_mode():
                prompt = prompt.to(dev)
                pos = torch.tensor(lengths, device=dev)[:, None]
                if eager and len(set(lengths)) == 1:
                    pos = pos[0]  # every row at the same position: one vector for all (slices, no mask on a CPU)
                seen = None
                if config.repetition_penalty != 1.0:
                    seen = torch.zeros(b, self.banned.shape[0], dtype=torch.bool, device=dev)
                    seen.scatter_(1, prompt, True)
                last = torch.tensor(lengths, device=dev) - 1
                logits = self.model(prompt, torch.arange(longest, device=dev), bypass_noncausal=self.bypass,
                                    logits_at=last, kv_len=longest if eager else None).logits[:, 0]
                for i in range(config.max_new_tokens):
                    tokens = pick_tokens(logits, config, self.banned, seen, generator)
                    if seen is not None:
                        seen.scatter_(1, tokens[:, None], True)
                    ready = _to_host(tokens, cuda)
                    if i + 1 < config.max_new_tokens:  # the device computes the next step meanwhile
                        if self.cuda_graphs:
                            torch.compiler.cudagraph_mark_step_begin()
                        logits = step(tokens[:, None], pos, None if self.compiled else longest + i + 1)
                        pos = pos + 1
                    if pending is not None:
                        self._take(pending, rows, config, on_token)
                        yield
                        if not any(row.live for row in rows):
                            return
                    pending = ready
                if pending is not None:
                    self._take(pending, rows, config, on_token)
                    yield
        finally:
            if eager:
                self.model.clear_cache()
                self._step_fn = None

    def _take(self, ready: tuple[torch.Tensor, torch.cuda.Event | None], rows: list[_Row], config: SamplingConfig,
              on_token: TokenCallback | None) -> None:
        """Add one step's tokens (read back from the device) to the live rows."""
        host, event = ready
        if event is not None:
            event.synchronize()
        tokens = host.tolist()
        for row, token in zip(rows, tokens):
            if row.live:
                row.live = self._extend(row, token, config, on_token)

    def _extend(self, row: _Row, token: int, config: SamplingConfig, on_token: TokenCallback | None) -> bool:
        """Add one generated token to a row; returns False once the sample is finished."""
        sample = row.sample
        sample.n_tokens += 1
        if token == self.eos_id:
            sample.text += row.utf8.decode(b"", final=True)
            sample.finish = "eos"
            return False
        sample.token_ids.append(token)
        before = len(sample.text)
        sample.text += row.utf8.decode(self.detok.token_bytes[token])
        last = sample.n_tokens >= config.max_new_tokens
        if last:
            sample.text += row.utf8.decode(b"", final=True)
        if config.stop and len(sample.text) > before:
            cuts = [i for i in (sample.text.find(s, max(0, before - len(s) + 1)) for s in config.stop) if i >= 0]
            if cuts:
                sample.text = sample.text[:min(cuts)]
                sample.finish = "stop"
        if on_token is not None:
            on_token(row.index, token, sample.text.rstrip("\ufffd") if last else sample.text)
        if sample.finish:
            return False
        if last:
            sample.finish = "length"
            return False
        return True


def _to_host(tokens: torch.Tensor, cuda: bool) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying one step's tokens to the host; on CUDA the copy runs behind the next step (read it after
    `event.synchronize()`)."""
    if not cuda:
        return tokens, None
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event
