"""A fast decoder: a one-token decode step with a fixed shape, compiled with CUDA graphs (gpt-fast style).

Greedy (`generate_greedy`) or sampled (`generate(temperature=, top_k=)`): the draw is made on the device by the
Gumbel-max trick (`pick_tokens`), so the loop never waits for the host, unlike `nanoeval.sample`, which reads every
token back for stop strings and streaming.

`GPT.forward(start_pos=p)` takes the position as a Python int and slices its KV cache to `p+1` keys, so every
step has a new shape: torch.compile would recompile (or re-record a CUDA graph) per position. The step here
takes the position as a 0-dim device tensor instead: RoPE angles are gathered with `index_select`, the new key
and value are written with `index_copy_` into the model's own static caches (module buffers, so CUDA graphs are
not skipped for "mutated inputs"), and attention reads the whole cache under a mask `key_pos <= pos`. One graph
then serves every position. The prefill is the same code over a chunk of `prefill_chunk` positions (default 64),
compiled separately with its own CUDA graph: a prompt runs as one call per chunk, the last chunk padded, so one
fixed shape serves every prompt length (dynamic shapes would recompile, and the first GPU run's attempt at that did
not finish compiling within its 110 s slot). Eagerly, the prefill is one host-bound `GPT.forward`, likely about as
long as one eager sampler step (26 ms at batch 1 on an H200 in the fourth run), ~10% of that run's 246 ms for a
256-token decode; the compiled chunk is not yet timed on a GPU. CPU, 20 layers at tiny widths, a 46-token prompt,
one thread: 30 ms compiled (one padded chunk) against 33-36 ms for the eager forward.

It reuses the model's modules (embedding, mHC, norms, projections, head) and only re-states the order of a
block's sub-layers; a test checks it against `GPT.forward(start_pos=...)` token for token. In the third H200 run a
token took 1.2 ms at batch 1 and at batch 64 alike, while reading the weights takes ~0.1 ms: the likely floor is
the kernel count (282 kernel calls per token in Inductor's CPU build of this step). So the step fuses what it can:
each block's q, k and v projections run as one matrix product over the concatenated weights, RoPE runs over the q
and k heads together, and the FFN's gate and up projections are one product (plain `nn.Linear` layers only;
ternary ones keep their own). That makes 182 calls in the CPU build. The fused weights are copies (~0.3 GB more
at full scale in bf16), refreshed in place (same addresses, so the CUDA graph stays valid) whenever a source
weight changed since the last call.

Supported: plain attention blocks, Engram layers, and non-causal wavefield blocks when bypassed (as sampling does).
Engram reads the n-gram ids and conv inputs before the new token from the model's own caches (`id_cache`, each
layer's `conv_cache`): the step writes the new ones at the tensor position with `index_copy_` and gathers the
earlier ones with `index_select`, zeros before position 0, as `GPT.forward(start_pos=...)` slices them. Causal
wavefield and LoopLM models keep the eager path: `FastDecoder` falls back to it, as it does when compilation
fails, and says why in `fallback_reason`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.model.attention import KVCache, apply_rope
from nanotrain.model.engram import Engram, causal_depthwise_conv, hash_indices
from nanotrain.model.mhc import collapse_streams, expand_streams
from nanotrain.model.stamp import weights_stamp

PREFILL_CHUNK = 64
"""Positions per prefill call of the static path: prompts up to this length take one call."""


def unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` cannot use the static decode step (None if it can)."""
    cfg = model.cfg
    if cfg.loop_count:
        return "LoopLM models are not supported by the static decode step"
    if any(hasattr(b, "wavefield") and not b.noncausal for b in model.blocks):
        return "causal wavefield layers are not supported by the static decode step"
    return None


def _before(cache: torch.Tensor, at: torch.Tensor, n: int) -> torch.Tensor:
    """cache[:, at-n : at] [B, n, ...] from a [B, max_len, ...] cache, zeros where the position is below 0."""
    back = at - torch.arange(n, 0, -1, device=cache.device)
    rows = cache.index_select(1, back.clamp(min=0))
    keep = (back >= 0).view(1, n, *([1] * (cache.dim() - 2)))
    return torch.where(keep, rows, torch.zeros((), dtype=cache.dtype, device=cache.device))


class StaticDecodeStep(nn.Module):
    """One decode step of a GPT at a tensor position: (token [B, 1], pos 0-dim long) -> logits [B, vocab].

    `hidden(tokens [B, C], pos)` runs C consecutive positions pos..pos+C-1 at once (the prefill's chunks) and
    returns the final-norm hidden states [B, C, dim]; `logits(h)` applies the tied head."""

    def __init__(self, model: nn.Module, bypass_noncausal: bool = False) -> None:
        super().__init__()
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(reason)
        self.model = model
        self.bypass_noncausal = bypass_noncausal
        # name -> the layers whose weights it concatenates (rows in this order); buffers `fused_<name>`
        self._sources: dict[str, tuple[nn.Module, ...]] = {}
        for i, block in enumerate(model.blocks):
            if hasattr(block, "attn"):
                self._fuse(f"qkv{i}", block.attn.wq, block.attn.wk, block.attn.wv)
            self._fuse(f"gate_up{i}", block.ffn.w_gate, block.ffn.w_up)
        self._stamp: tuple | None = None
        self.refresh_fused()

    def _fuse(self, name: str, *linears: nn.Module) -> None:
        if not all(type(lin) is nn.Linear and lin.bias is None for lin in linears):
            return  # e.g. ternary layers: their quantisation is per layer, so they are not concatenated
        self._sources[name] = linears
        rows = sum(lin.weight.shape[0] for lin in linears)
        w = linears[0].weight
        self.register_buffer(f"fused_{name}", torch.empty(rows, w.shape[1], dtype=w.dtype, device=w.device),
                             persistent=False)
        torch._dynamo.mark_static_address(self._fused(name))  # copied into in place: CUDA graphs keep its address

    def _fused(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"fused_{name}", None)

    def refresh_fused(self) -> bool:
        """Copy the source weights into the fused buffers (in place) unless none changed since the last copy
        (`nanotrain.model.stamp.weights_stamp`: identity, data pointer, version; inference-tensor weights, whose
        changes cannot be told, are copied every time). Returns whether it copied."""
        stamp = weights_stamp(lin.weight for linears in self._sources.values() for lin in linears)
        if stamp is not None and stamp == self._stamp:
            return False
        with torch.no_grad():
            for name, linears in self._sources.items():
                torch.cat([lin.weight.detach() for lin in linears], dim=0, out=self._fused(name))
        self._stamp = stamp
        return True

    def forward(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(token, pos)[:, -1])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.model.tok_embed.weight.to(h.dtype))

    def hidden(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, C, dim] of tokens [B, C] at positions pos.. (0-dim long tensor); writes each
        layer's keys and values, the token ids and the Engram conv inputs into the caches at those positions.
        A query sees the cache up to its own position, so later positions may hold anything."""
        m = self.model
        at = pos + torch.arange(token.shape[1], device=token.device)
        rope = (m.rope_cos.index_select(0, at), m.rope_sin.index_select(0, at))
        hash_idx = self._hash_indices(token, at) if m.cfg.engram_layers else None
        streams = expand_streams(m.tok_embed(token), m.cfg.mhc_streams)
        for i, block in enumerate(m.blocks):
            if not (self.bypass_noncausal and block.noncausal):
                u = block.mhc_attn.prepare(streams)
                if block.engram is not None:
                    u = self._engram(block.engram, u, hash_idx, at)
                normed = block.norm_attn(u)
                attn_out = self._attention(block.attn, block.kv_cache, normed, rope, at, self._fused(f"qkv{i}"))
                streams = block.mhc_attn.apply(streams, attn_out)
            ffn_out = self._ffn(block.ffn, block.norm_ffn(block.mhc_ffn.prepare(streams)), self._fused(f"gate_up{i}"))
            streams = block.mhc_ffn.apply(streams, ffn_out)
        return m.norm_final(collapse_streams(streams))

    def _hash_indices(self, token: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Engram table indices [B, C, n_tables] of the n-grams ending at each of `token` [B, C]: the ids go into
        the model's `id_cache` at positions `at` [C], the ids before the first are gathered from there (zeros
        before position 0), as `GPT._hash_indices` does with an int position."""
        m = self.model
        m.id_cache.index_copy_(1, at, token)
        history = _before(m.id_cache, at[:1], max(m.cfg.engram_orders) - 1)
        return hash_indices(token, history, m.engram_mult, m.engram_order, m.cfg.engram_table_size)

    @staticmethod
    def _engram(engram: nn.Module, u: torch.Tensor, indices: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """`Engram.forward(u, indices, start_pos)` at tensor positions `at` [C]: z goes into the conv cache there,
        the conv reads the K-1 inputs before the first from there."""
        z = engram.gated_values(u, indices)
        engram.conv_cache.index_copy_(1, at, z.to(engram.conv_cache.dtype))
        past = _before(engram.conv_cache, at[:1], engram.conv_weight.shape[-1] - 1)
        return u + causal_depthwise_conv(z, engram.conv_weight, past)

    @staticmethod
    def _ffn(ffn: nn.Module, x: torch.Tensor, gate_up: torch.Tensor | None) -> torch.Tensor:
        if gate_up is None:
            return ffn(x)
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return ffn.w_down(F.silu(gate) * up)

    @staticmethod
    def _attention(attn: nn.Module, cache: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   at: torch.Tensor, qkv: torch.Tensor | None) -> torch.Tensor:
        b, t, h, hkv, hd = x.shape[0], x.shape[1], attn.n_heads, attn.n_kv_heads, attn.head_dim
        if qkv is None:
            q = apply_rope(attn.wq(x).view(b, t, h, hd).transpose(1, 2), *rope)
            k = apply_rope(attn.wk(x).view(b, t, hkv, hd).transpose(1, 2), *rope)
            v = attn.wv(x).view(b, t, hkv, hd).transpose(1, 2)
        else:  # one product, and RoPE over the q and k heads together (one kernel instead of two)
            qk, v = F.linear(x, qkv).split([(h + hkv) * hd, hkv * hd], dim=-1)
            qk = apply_rope(qk.reshape(b, t, h + hkv, hd).transpose(1, 2), *rope)
            q, k = qk[:, :h], qk[:, h:]
            v = v.reshape(b, t, hkv, hd).transpose(1, 2)
        cache.k.index_copy_(2, at, k.to(cache.k.dtype))
        cache.v.index_copy_(2, at, v.to(cache.v.dtype))
        visible = torch.arange(cache.k.shape[2], device=x.device)[None, :] <= at[:, None]  # [t, max_len]
        out = F.scaled_dot_product_attention(q, cache.k.to(q.dtype), cache.v.to(q.dtype),
                                             attn_mask=visible.view(1, 1, t, -1), enable_gqa=True)
        return attn.wo(out.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim))


class FastDecoder:
    """Decoding (greedy or sampled) for a fixed batch size and length, compiled on CUDA, eager elsewhere or on
    failure.

    `compile=None` compiles on CUDA only. After construction `compiled` says which path runs,
    `fallback_reason` why the static/compiled path is not used (None when it is), and `cuda_graphs` whether the
    compiled step really replays a CUDA graph: Inductor can compile the step yet skip the graph (it then logs
    "skipping cudagraphs due to ..." under TORCH_LOGS=cudagraphs, and each token launches every kernel from the
    host again); the decoder counts Inductor's cudagraph skips while it compiles. The decoder owns the model's
    decoding caches: if something else (e.g. `nanoeval.sample`) cleared or replaced them in between, the next
    call sets them up again (on CUDA that re-records the graph).

    Per token the compiled step also pays for Dynamo's guards: ~0.2 ms of host time per call for the full-scale
    step's ~425 inputs (CPU, measured: 1.66 against 1.42 ms per call), at batch 1 a large share of a token. The loop
    therefore runs under `torch.compiler.set_stance(skip_guard_eval_unsafe=True)`, which skips the guards once the
    cache entry is settled. That is safe here because the decoder fixes what the guards check: the warm-up compiled
    the step for this batch size in inference mode, every call feeds the same shapes, and each `generate`
    first compares the model's tensors (dtype, device, shape) with those seen at compile time and keeps the guards
    when anything differs (e.g. after `model.half()`), or when it has just set up new caches (new static addresses,
    which the guards catch and compile for). Should Dynamo still ask to compile again under that stance (it raises),
    the call decodes again with the guards, and so does every later call.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_len: int, *, compile: bool | None = None,
                 bypass_noncausal: bool = False, prefill_chunk: int = PREFILL_CHUNK) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk {prefill_chunk}: must be at least 1")
        param = next(model.parameters())
        self.model, self.batch_size, self.max_len = model.eval(), batch_size, max_len
        self.prefill_chunk = min(prefill_chunk, max_len)
        self.device = param.device
        self.bypass = bypass_noncausal
        self.fallback_reason: str | None = unsupported_reason(model)
        self.static = self.fallback_reason is None
        want_compile = self.device.type == "cuda" if compile is None else compile
        self.dtype = param.dtype
        self._setup_caches()
        self.positions = torch.arange(max_len, device=self.device)
        self._static_step = StaticDecodeStep(model, bypass_noncausal) if self.static else None
        self._step = self._static_step
        self._prefill_step = self._static_step.hidden if self.static else None
        self.compiled = False
        self.cuda_graphs = False
        self._compiled_for: tuple | None = None
        if self.static and want_compile:
            self._try_compile()

    def _decode_buffers(self) -> list[torch.Tensor | None]:
        """Every cache the decode step writes: each attention's keys and values, each Engram's conv inputs and
        the model's token ids (Engram models)."""
        out: list[torch.Tensor | None] = []
        for module in self.model.modules():
            if isinstance(module, KVCache):
                out += [module.k, module.v]
            elif isinstance(module, Engram):
                out.append(module.conv_cache)
        if self.model.cfg.engram_layers:
            out.append(self.model.id_cache)
        return out

    def _setup_caches(self) -> None:
        """Allocate the model's caches and remember them; static addresses let CUDA graphs write them in place."""
        self.model.setup_cache(self.batch_size, self.max_len, device=self.device, dtype=self.dtype)
        self._caches = self._decode_buffers()
        for buf in self._caches:
            torch._dynamo.mark_static_address(buf)

    def _caches_intact(self) -> bool:
        """False if something (e.g. `nanoeval.sample`) cleared or replaced a cache since `_setup_caches`."""
        now = self._decode_buffers()
        return len(now) == len(self._caches) and all(a is b for a, b in zip(now, self._caches))

    def _prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] after `prompt` [B, T0], its positions written into the caches.

        The static path runs the prompt in chunks of `prefill_chunk` positions, each one call of one fixed shape
        (one compiled graph for every prompt length): chunk i covers positions i*C..i*C+C-1, the last one padded
        on the right with id 0, or moved back to end at `max_len` when it would run past it (it then writes some
        positions again, with the same values up to rounding). Padding writes positions at or after T0, which the loop
        overwrites before it reads them."""
        if self._prefill_step is None:
            return self.model(prompt, start_pos=0, bypass_noncausal=self.bypass).logits[:, -1]
        b, t0 = prompt.shape
        c = self.prefill_chunk
        start = 0
        while True:
            s = min(start, self.max_len - c)
            chunk = torch.zeros(b, c, dtype=torch.long, device=self.device)  # the same shape and strides each call
            n = min(c, t0 - s)
            chunk[:, :n] = prompt[:, s:s + n]
            h = self._prefill_step(chunk, self.positions[s])
            if s + c >= t0:
                return self._static_step.logits(h[:, t0 - 1 - s])
            start = s + c

    def _try_compile(self) -> None:
        """Compile the step (CUDA graphs on CUDA) and warm it up; fall back to eager on any error."""
        from torch._dynamo.utils import counters

        eager_step, eager_prefill = self._step, self._prefill_step
        skips = counters["inductor"]["cudagraph_skips"]
        try:
            self._step = torch.compile(eager_step, mode="reduce-overhead", fullgraph=True)
            self._prefill_step = torch.compile(eager_prefill, mode="reduce-overhead", fullgraph=True)
            with torch.inference_mode():
                # made in inference mode like the ids `generate` feeds: a normal tensor has another
                # dispatch key set, and that guard failure recompiled the step at the first real call (both the
                # third H200 run and the CPU show it: frames [0/0] then [0/1])
                warm = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)[:, None]
                chunk = torch.zeros(self.batch_size, self.prefill_chunk, dtype=torch.long, device=self.device)
                for p in (0, 1, 2):  # (the positions the warm-up writes hold garbage until a call writes them)
                    self._prefill_step(chunk, self.positions[p * (self.max_len - self.prefill_chunk) // 2])
                for p in (2, 3, 4):
                    self._step(warm, self.positions[p])
            self.compiled = True
            self.cuda_graphs = self.device.type == "cuda" and counters["inductor"]["cudagraph_skips"] == skips
            self._compiled_for = self._tensor_signature()
        except Exception as e:  # any compiler/backend failure: decoding must still work
            self._step, self._prefill_step = eager_step, eager_prefill
            self.fallback_reason = f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    def _tensor_signature(self) -> tuple:
        """(dtype, device, shape) of every parameter and buffer: what the compiled step was specialised for."""
        return tuple((t.dtype, t.device, t.shape) for t in (*self.model.parameters(), *self.model.buffers()))

    def skips_guards(self) -> bool:
        """Whether the next `generate` runs the compiled step without Dynamo's guards (see the class doc)."""
        return self.compiled and self._compiled_for == self._tensor_signature()

    def generate_greedy(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of `prompt` [batch_size, T0]; returns the new ids [batch_size, max_new_tokens]."""
        return self.generate(prompt, max_new_tokens)

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continuation of `prompt` [batch_size, T0]; returns the new ids [batch_size, max_new_tokens].

        temperature 0 is greedy; above 0 each row draws from softmax(logits / temperature), restricted to its
        top_k logits when top_k > 0 (`pick_tokens`: on the device, no host sync), with `generator`'s random
        numbers (the default generator when None)."""
        b, t0 = prompt.shape
        if t0 < 1 or max_new_tokens < 1:
            raise ValueError(f"need a prompt of at least 1 token and at least 1 new token; got {t0} and "
                             f"{max_new_tokens}")
        if b != self.batch_size or t0 + max_new_tokens > self.max_len:
            raise ValueError(f"decoder was built for batch {self.batch_size} and {self.max_len} positions; "
                             f"got batch {b}, {t0} + {max_new_tokens} positions")
        if temperature < 0 or top_k < 0:
            raise ValueError(f"temperature {temperature} and top_k {top_k}: both must be >= 0")

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return pick_tokens(logits, temperature, top_k, generator)

        rng_state, rng = None, generator
        if temperature > 0 and top_k != 1:  # sampling: keep the generator's state for a decode that starts over
            if rng is None:
                rng = (torch.cuda.default_generators[self.device.index or torch.cuda.current_device()]
                       if self.device.type == "cuda" else torch.default_generator)
            rng_state = rng.get_state()
        fresh_caches = not self._caches_intact()
        if fresh_caches:
            with torch.inference_mode(False):  # normal tensors, like the caches the warm-up compiled for
                self._setup_caches()  # new cache tensors: the step's graph is recorded again, with guards
        if self._static_step is not None:
            self._static_step.refresh_fused()
        if self.skips_guards() and not fresh_caches:
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self._decode(prompt, max_new_tokens, pick)
            except RuntimeError as e:  # Dynamo wanted to compile again after all: decode again, guarded from now on
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
                self._compiled_for = None
                if rng_state is not None:  # the same draws as an uninterrupted call
                    rng.set_state(rng_state)
        return self._decode(prompt, max_new_tokens, pick)

    def _decode(self, prompt: torch.Tensor, max_new_tokens: int,
                pick: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Prefill, then the decode loop (every cache position the loop reads is written first by this call)."""
        t0 = prompt.shape[1]
        token = pick(self._prefill(prompt))
        out = [token]
        for i in range(max_new_tokens - 1):
            if self.static:
                logits = self._step(token[:, None], self.positions[t0 + i])
            else:
                logits = self.model(token[:, None], start_pos=t0 + i, bypass_noncausal=self.bypass).logits[:, -1]
            token = pick(logits)
            out.append(token)
        return torch.stack(out, dim=1)


def pick_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` [B, V]: the argmax when temperature is 0 (or top_k is 1), else a draw from
    softmax(logits / temperature) over the row's top_k logits (all when top_k is 0).

    The draw is the Gumbel-max trick, argmax(x - log(-log(u))) with u uniform in [0, 1): pointwise ops, a top-k and
    an argmax, all on the device, so the decode loop never waits for the host (`nanoeval.sample` reads every
    token back with `.tolist()`). Same distribution, other random numbers than `nanoeval.sample`'s
    `torch.multinomial`, so the two do not give the same text for a seed."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    x = logits.float() / temperature
    index = None
    if 0 < top_k < x.shape[-1]:
        x, index = x.topk(top_k, dim=-1)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    choice = (x - torch.log(-torch.log(u))).argmax(-1)
    return choice if index is None else index.gather(-1, choice[:, None]).squeeze(-1)
