"""LoopLM: one shared block applied `loop_count` times between local blocks (docs/original-runs.md).

Per iteration the shared block runs (all iterations share weights, no RoPE, causal attention):
    u = mhc_attn.prepare(X); n = norm_attn(u); a = attn(n)
    if a global state G exists: g = sigmoid(g_qk(n)); a = g*a + (1-g)*G
    X = mhc_attn.apply(X, a)
    v = mhc_ffn.prepare(X); m = norm_ffn(v); f = ffn(m)
    if G exists: g = sigmoid(g_ffn(m)); f = g*f + (1-g)*G
    X = mhc_ffn.apply(X, f);  G = (a + f)/2   (G is None in the first iteration)
ExitGate: p = mean_batch sigmoid(w . mean_t(mhc_ffn.prepare(X)) + b), read after the FFN (seed fix 8). It is
computed and returned for inspection but enters no loss, as in the seed. It averages over the T positions of the
call, so it is a diagnostic, not a per-token quantity.
Each iteration attends to its own keys/values, so the block owns one KV cache per iteration (`kv_caches.{i}`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.attention import Attention, KVCache
from nanotrain.model.cache import Positions
from nanotrain.model.mhc import MHCLite, Streams
from nanotrain.model.mlp import SwiGLU
from nanotrain.model.norm import RMSNorm
from nanotrain.model.quant import make_linear


class ExitGate(nn.Module):
    """Early-exit probability from the mean hidden state: weight [1, dim] ~ N(0, 1/sqrt(dim)), bias [1] = 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, dim] -> a 0-dim exit probability."""
        pooled = x.mean(dim=1)
        return torch.sigmoid(pooled @ self.weight.T.to(pooled.dtype) + self.bias).mean()


class SharedLoopBlock(nn.Module):
    """The looped block with gated global state (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = RMSNorm(cfg.dim, cfg.norm_eps)
        self.norm_ffn = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mhc_attn = MHCLite(cfg.mhc_streams, cfg.mhc_init)
        self.mhc_ffn = MHCLite(cfg.mhc_streams, cfg.mhc_init)
        self.attn = Attention(cfg)
        self.ffn = SwiGLU(cfg)
        self.g_qk = make_linear(cfg.dim, cfg.dim, cfg)
        self.g_ffn = make_linear(cfg.dim, cfg.dim, cfg)
        self.exit_gate = ExitGate(cfg.dim)
        self.kv_caches = nn.ModuleList(KVCache() for _ in range(cfg.loop_count))

    def forward(self, streams: Streams, state: torch.Tensor | None, iteration: int,
                at: Positions | None = None) -> tuple[Streams, torch.Tensor, torch.Tensor]:
        """One iteration: returns (streams, new global state, exit probability)."""
        normed = self.norm_attn(self.mhc_attn.prepare(streams))
        a = self.attn(normed, None, at, self.kv_caches[iteration])
        if state is not None:
            g = torch.sigmoid(self.g_qk(normed))
            a = g * a + (1 - g) * state
        streams = self.mhc_attn.apply(streams, a)
        normed = self.norm_ffn(self.mhc_ffn.prepare(streams))
        f = self.ffn(normed)
        if state is not None:
            g = torch.sigmoid(self.g_ffn(normed))
            f = g * f + (1 - g) * state
        streams = self.mhc_ffn.apply(streams, f)
        exit_p = self.exit_gate(self.mhc_ffn.prepare(streams))
        return streams, (a + f) / 2, exit_p
