"""The one nanolab language model, assembled from a `ModelConfig` (docs/original-runs.md).

Read top to bottom:
- token embedding E [vocab, dim] ~ N(0, 0.02), tied to the output head (logits = h E^T, no separate head param)
- mHC-lite expand into N residual streams (§2.2, `mhc.py`)
- blocks (§2.3): [mHC prepare -> Engram (chosen layers, §4) -> RMSNorm -> attention (§2.4) or wavefield (§3)
  -> mHC apply] then [mHC prepare -> RMSNorm -> SwiGLU (§2.5) -> mHC apply];
  or, for LoopLM (§6.7), local_before blocks -> shared block x loop_count -> local_after blocks
- collapse the streams (mean), final RMSNorm, tied head (§2.6); optional MTP heads (§5) on the same hidden state.
`forward(idx)` is the full causal forward (training, held-out loss). `forward(idx, input_pos)` is the cached
forward that serves both prefill and decode: token idx[b, t] sits at position input_pos[b, t], and every cache
set up by `setup_cache` (KV, Engram conv inputs and token ids, causal wavefield values, one KV slot per loop
iteration) is written and read by position (`nanotrain.model.cache`), so a decode step has the same shapes at
every position and rows of one batch can sit at different positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.errors import UserError
from nanotrain.flat import FlatMirror
from nanotrain.model.attention import Attention, KVCache, rope_tables
from nanotrain.model.cache import Positions, read_before, write_at
from nanotrain.model.engram import Engram, hash_indices, hash_primes, hash_tables
from nanotrain.model.frozen import linear
from nanotrain.model.fused import fuse_legacy_names, stack_rows
from nanotrain.model.loop import SharedLoopBlock
from nanotrain.model.mhc import MHCLite, Streams, clamp_mixing_logits_, collapse_streams, expand_streams
from nanotrain.model.mlp import SwiGLU
from nanotrain.model.mtp import MTPHeads
from nanotrain.model.norm import RMSNorm
from nanotrain.model.wavefield import WavefieldAttention, wavefield_layer_indices


@dataclass
class ModelOutput:
    """logits [B, T, vocab]; mtp_logits[i][:, t] predicts token t+i+2 (full forward only, else empty);
    exit_probs: LoopLM ExitGate probabilities, one 0-dim tensor per loop iteration (diagnostic only)."""

    logits: torch.Tensor
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    exit_probs: list[torch.Tensor] = field(default_factory=list)


def validate_config(cfg: ModelConfig) -> None:
    """Refuse configs the model cannot build, with one line naming the field."""
    checks = [
        (cfg.dim % cfg.n_heads == 0, f"dim {cfg.dim} is not divisible by n_heads {cfg.n_heads}"),
        (cfg.n_heads % cfg.n_kv_heads == 0, f"n_heads {cfg.n_heads} is not divisible by n_kv_heads {cfg.n_kv_heads}"),
        ((cfg.dim // cfg.n_heads) % 2 == 0, "head_dim (dim/n_heads) must be even for RoPE"),
        (cfg.mhc_streams >= 1, "mhc_streams must be >= 1"),
        (cfg.mhc_init in ("broken", "seed"), f"mhc_init must be 'broken' or 'seed', got {cfg.mhc_init!r}"),
        (cfg.quant in ("none", "ternary"), f"quant must be 'none' or 'ternary', got {cfg.quant!r}"),
        (cfg.engram_primes in ("verified", "seed"),
         f"engram_primes must be 'verified' or 'seed', got {cfg.engram_primes!r}"),
        (cfg.wavefield_mode in ("bidirectional", "causal"),
         f"wavefield_mode must be 'bidirectional' or 'causal', got {cfg.wavefield_mode!r}"),
        (0.0 <= cfg.wavefield_ratio <= 1.0, "wavefield_ratio must be in [0, 1]"),
        (cfg.mtp_heads >= 0 and cfg.loop_count >= 0, "mtp_heads and loop_count must be >= 0"),
    ]
    if cfg.wavefield_ratio > 0:
        heads = cfg.wavefield_heads or cfg.n_heads
        checks += [
            (cfg.dim % heads == 0, f"dim {cfg.dim} is not divisible by wavefield_heads {heads}"),
            (cfg.wavefield_field_size % (2 ** cfg.wavefield_haar_levels) == 0,
             f"wavefield_field_size {cfg.wavefield_field_size} is not divisible by 2^wavefield_haar_levels"),
            (cfg.loop_count == 0, "wavefield layers are not supported in a LoopLM (loop_count > 0)"),
        ]
    n_local = cfg.loop_local_before + cfg.loop_local_after if cfg.loop_count else cfg.n_layers
    if cfg.loop_count:
        checks.append((n_local + cfg.loop_count == cfg.n_layers,
                       f"LoopLM: loop_local_before + loop_count + loop_local_after must equal n_layers {cfg.n_layers}"))
    checks.append((all(0 <= i < n_local for i in cfg.engram_layers),
                   f"engram_layers {cfg.engram_layers} out of range for {n_local} (local) layers"))
    for ok, message in checks:
        if not ok:
            raise UserError(f"model config: {message}")


class Block(nn.Module):
    """One pre-norm layer over mHC streams: attention (or wavefield) sub-layer, then the FFN sub-layer."""

    def __init__(self, cfg: ModelConfig, wavefield: bool = False, engram: bool = False) -> None:
        super().__init__()
        self.norm_attn = RMSNorm(cfg.dim, cfg.norm_eps)
        self.norm_ffn = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mhc_attn = MHCLite(cfg.mhc_streams, cfg.mhc_init)
        self.mhc_ffn = MHCLite(cfg.mhc_streams, cfg.mhc_init)
        self.engram = Engram(cfg) if engram else None
        self.is_wavefield = wavefield  # (a plain bool: hasattr on a module costs an exception when it is absent)
        if wavefield:
            self.wavefield = WavefieldAttention(cfg)
        else:
            self.attn = Attention(cfg)
            self.kv_cache = KVCache()
        self.ffn = SwiGLU(cfg)

    @property
    def noncausal(self) -> bool:
        """True for a bidirectional wavefield layer."""
        return self.is_wavefield and not self.wavefield.causal

    def forward(self, streams: Streams, rope: tuple[torch.Tensor, torch.Tensor],
                hash_idx: torch.Tensor | None, at: Positions | None, bypass_noncausal: bool) -> Streams:
        """mHC streams -> streams; a bypassed non-causal layer skips its whole mixing sub-layer."""
        if not (bypass_noncausal and self.noncausal):
            u = self.mhc_attn.prepare(streams)
            if self.engram is not None:
                u = self.engram(u, hash_idx, at)
            normed = self.norm_attn(u)
            if self.is_wavefield:
                mixed = self.wavefield(normed, at)
            else:
                mixed = self.attn(normed, rope, at, self.kv_cache)
            streams = self.mhc_attn.apply(streams, mixed)
        ffn_out = self.ffn(self.norm_ffn(self.mhc_ffn.prepare(streams)))
        return self.mhc_ffn.apply(streams, ffn_out)


def _fuse_legacy_weights(_module, state_dict, *_args) -> None:
    """Load-time hook: a state dict with separate q/k/v or gate/up weights loads into the fused ones."""
    fused = fuse_legacy_names(dict(state_dict), stack_rows)
    if len(fused) != len(state_dict):
        state_dict.clear()
        state_dict.update(fused)


class GPT(nn.Module):
    """Decoder-only LM; every architecture feature is switched on by `ModelConfig` (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self._clamp_modules: list[MHCLite] | None = None  # after_optimizer_step's list, made on its first call
        self._noncausal: list[int] | None = None  # noncausal_layers(), made on its first call
        self._clamp_mirror = FlatMirror()
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.packed_head: torch.Tensor | None = None  # the tied head in oneDNN's layout inside `frozen_weights`
        nn.init.normal_(self.tok_embed.weight, mean=0.0, std=cfg.init_std)
        engram_at = set(cfg.engram_layers)
        if cfg.loop_count:
            n_before = cfg.loop_local_before
            self.local_before = nn.ModuleList(Block(cfg, engram=i in engram_at) for i in range(n_before))
            self.shared_loop = SharedLoopBlock(cfg)
            self.local_after = nn.ModuleList(
                Block(cfg, engram=n_before + i in engram_at) for i in range(cfg.loop_local_after))
        else:
            wave_at = set(wavefield_layer_indices(cfg.n_layers, cfg.wavefield_ratio)) if cfg.wavefield_ratio else set()
            self.blocks = nn.ModuleList(
                Block(cfg, wavefield=i in wave_at, engram=i in engram_at) for i in range(cfg.n_layers))
        self.norm_final = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mtp = MTPHeads(cfg.dim, cfg.vocab_size, cfg.mtp_heads) if cfg.mtp_heads else None
        cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("id_cache", None, persistent=False)
        self.register_buffer("cache_positions", None, persistent=False)  # 0..max_len-1 while caches are set up
        coeffs = hash_tables(cfg.engram_orders, cfg.engram_heads, hash_primes(cfg.engram_primes))
        self.register_buffer("engram_coeffs", coeffs, persistent=False)
        self.register_load_state_dict_pre_hook(_fuse_legacy_weights)

    def local_blocks(self) -> list[Block]:
        """The ordinary blocks in depth order (all blocks, or LoopLM's local_before + local_after)."""
        if self.cfg.loop_count:
            return [*self.local_before, *self.local_after]
        return list(self.blocks)

    @property
    def is_causal(self) -> bool:
        """False iff a bidirectional wavefield layer exists."""
        return not self.noncausal_layers()

    def noncausal_layers(self) -> list[int]:
        """Indices of the bidirectional (non-causal) wavefield layers (fixed by the config: listed once, since every
        cached forward asks)."""
        if self._noncausal is None:
            self._noncausal = [i for i, block in enumerate(self.local_blocks()) if block.noncausal]
        return list(self._noncausal)

    @property
    def has_unused_parameters(self) -> bool:
        """True when some parameters never get a gradient (wavefield omega/alpha_raw/phi, LoopLM ExitGate):
        DDP must then be built with find_unused_parameters=True."""
        return self.cfg.loop_count > 0 or self.cfg.wavefield_ratio > 0

    def param_counts(self) -> dict[str, int]:
        """{"total", "excl_tables", "engram_tables"}: Engram tables are counted apart, as the seed's param_count()."""
        total = sum(p.numel() for p in self.parameters())
        tables = sum(p.numel() for name, p in self.named_parameters() if ".engram.tables." in name)
        return {"total": total, "excl_tables": total - tables, "engram_tables": tables}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """In-place post-step constraints: clamp every mHC mixing logit to [-3, 3] (no host sync), all at once.
        The mHC modules are listed on the first call (walking every module each step costs ~1 ms of host time)."""
        if self._clamp_modules is None:
            self._clamp_modules = [m for m in self.modules() if isinstance(m, MHCLite) and m.n_streams > 1]
        clamp_mixing_logits_([m.mixing_logits() for m in self._clamp_modules], self._clamp_mirror)

    def setup_cache(self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> None:
        """Preallocate every decoding cache for `batch_size` sequences of up to `max_len` tokens."""
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise UserError(f"cache length {max_len} exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        device = torch.device(device) if device is not None else self.tok_embed.weight.device
        dtype = dtype or self.tok_embed.weight.dtype
        cfg = self.cfg
        head_dim = cfg.dim // cfg.n_heads
        caches = [m for m in self.modules() if isinstance(m, KVCache)]
        for cache in caches:
            cache.setup(batch_size, cfg.n_kv_heads, max_len, head_dim, device, dtype)
        for module in self.modules():
            if isinstance(module, Engram) or (isinstance(module, WavefieldAttention) and module.causal):
                module.setup_cache(batch_size, max_len, device, dtype)
        self.id_cache = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.cache_positions = torch.arange(max_len, device=device)

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        """(batch size, length) of the caches set up by `setup_cache`, None when there are none."""
        return None if self.id_cache is None else tuple(self.id_cache.shape)

    def clear_cache(self) -> None:
        """Free every decoding cache."""
        for module in self.modules():
            if isinstance(module, KVCache):
                module.clear()
            elif isinstance(module, (Engram, WavefieldAttention)):
                module.clear_cache()
        self.id_cache = None
        self.cache_positions = None

    def _hash_indices(self, idx: torch.Tensor, at: Positions | None) -> torch.Tensor:
        """Engram table indices for idx; in a cached forward the ids before the call come from `id_cache`."""
        cfg = self.cfg
        history = None
        if at is not None:
            write_at(self.id_cache, 1, at, idx)
            history = read_before(self.id_cache, at, max(cfg.engram_orders) - 1)
        return hash_indices(idx, history, self.engram_coeffs, cfg.engram_table_size)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, *, bypass_noncausal: bool = False,
                logits_at: torch.Tensor | None = None, kv_len: int | None = None) -> ModelOutput:
        """idx [B, T] token ids -> ModelOutput.

        `input_pos` [B, T] (or [T] for every row) runs the cached forward: each row's positions are consecutive
        and below the cache length, which the caller keeps to (checking it would cost a device sync). A [T]
        vector on the CPU lets the caches use slices instead of per-row indexing (`nanotrain.model.cache`).
        `kv_len` (eager decoding) tells the cached forward that no position is at or above it, so attention reads
        only the first `kv_len` cache positions; without it every step reads the whole cache (one shape for
        every step, as a compiled step needs).
        `logits_at` [B] computes the logits of one position per row only (index into T): logits [B, 1, vocab].
        MTP logits come from the full forward only."""
        cfg = self.cfg
        b, t = idx.shape
        at = None
        if input_pos is None:
            if t > cfg.max_seq_len:
                raise UserError(f"sequence of {t} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
            rope = (self.rope_cos[:t], self.rope_sin[:t])
        else:
            if not bypass_noncausal and not self.is_causal:
                raise UserError("this model has bidirectional wavefield layers: a cached forward needs "
                                "bypass_noncausal=True")
            if self.cache_positions is None:
                raise RuntimeError("caches not set up: call model.setup_cache(batch_size) before a cached forward")
            pos = input_pos.expand(b, t)
            start = int(input_pos[0]) if input_pos.dim() == 1 and input_pos.device.type == "cpu" else None
            at = Positions(pos, self.cache_positions[:kv_len], self.tok_embed.weight.dtype, start)
            if start is None:
                rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
            else:
                rope = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])
        hash_idx = self._hash_indices(idx, at) if cfg.engram_layers else None
        streams = expand_streams(self.tok_embed(idx), cfg.mhc_streams)
        exit_probs: list[torch.Tensor] = []
        if cfg.loop_count:
            for block in self.local_before:
                streams = block(streams, rope, hash_idx, at, bypass_noncausal)
            state = None
            for i in range(cfg.loop_count):
                streams, state, exit_p = self.shared_loop(streams, state, i, at)
                exit_probs.append(exit_p)
            for block in self.local_after:
                streams = block(streams, rope, hash_idx, at, bypass_noncausal)
        else:
            for block in self.blocks:
                streams = block(streams, rope, hash_idx, at, bypass_noncausal)
        h = collapse_streams(streams)
        if logits_at is not None:
            h = h.gather(1, logits_at.view(b, 1, 1).expand(b, 1, h.shape[-1]))
        h = self.norm_final(h)
        head = self.tok_embed.weight
        if head.dtype == h.dtype:
            logits = linear(h, head, self.packed_head)
        else:
            logits = F.linear(h, head.to(h.dtype))
        mtp_logits = self.mtp(h) if self.mtp is not None and at is None and logits_at is None else []
        return ModelOutput(logits=logits, mtp_logits=mtp_logits, exit_probs=exit_probs)
