"""Grouped-query causal self-attention with RoPE and a static KV cache (seed-spec §2.4).

- Projections `wq` [n_heads*hd, dim], `wk`/`wv` [n_kv_heads*hd, dim], `wo` [dim, n_heads*hd], bias-free.
- RoPE, theta 10000, half-split pairing (x_i, x_{i+hd/2}):
  x'_i = x_i cos - x_{i+hd/2} sin,  x'_{i+hd/2} = x_i sin + x_{i+hd/2} cos,  angle = pos * theta^(-2i/hd).
- Attention through `F.scaled_dot_product_attention(..., enable_gqa=True)`.
  GQA mapping: query head h reads KV head h // (n_heads / n_kv_heads) (torch's grouped, `repeat_interleave`
  convention). The seed tiles instead (query head h reads KV head h mod n_kv_heads); the two only differ in how
  query heads are numbered, so importing seed weights needs the rows of `wq` (and columns of `wo`) permuted.
- The KV cache is a pair of preallocated buffers [B, n_kv, max_len, hd], written in place at `start_pos`, so a
  decode step does no allocation or concatenation. The cache is not part of the state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.quant import make_linear


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim/2] for positions 0..max_len-1 (fp32)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] with half-split pairs; cos/sin are [T, hd/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def decode_mask(start_pos: int, q_len: int, device: torch.device) -> torch.Tensor:
    """Boolean mask [q_len, start_pos+q_len]: the query at position start_pos+i sees keys 0..start_pos+i."""
    q_pos = torch.arange(start_pos, start_pos + q_len, device=device)
    k_pos = torch.arange(start_pos + q_len, device=device)
    return k_pos[None, :] <= q_pos[:, None]


class KVCache(nn.Module):
    """Static key/value buffers [B, n_kv, max_len, hd]; empty until `setup` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k", None, persistent=False)
        self.register_buffer("v", None, persistent=False)

    def setup(self, batch_size: int, n_kv: int, max_len: int, head_dim: int,
              device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch_size, n_kv, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def clear(self) -> None:
        self.k = None
        self.v = None

    def update(self, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, n_kv, T, hd] at positions start_pos.. and return all keys/values up to the last one."""
        if self.k is None:
            raise RuntimeError("KV cache not set up: call model.setup_cache(batch_size) before start_pos decoding")
        b, _, t, _ = k.shape
        end = start_pos + t
        if end > self.k.shape[2] or b > self.k.shape[0]:
            raise ValueError(f"KV cache holds batch {self.k.shape[0]} x {self.k.shape[2]} positions; "
                             f"got batch {b} up to position {end}")
        self.k[:b, :, start_pos:end] = k
        self.v[:b, :, start_pos:end] = v
        return self.k[:b, :, :end], self.v[:b, :, :end]


class Attention(nn.Module):
    """Causal GQA attention; RoPE is optional so the LoopLM shared block can run without it (spec §6.7)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = make_linear(cfg.dim, cfg.n_heads * self.head_dim, cfg)
        self.wk = make_linear(cfg.dim, cfg.n_kv_heads * self.head_dim, cfg)
        self.wv = make_linear(cfg.dim, cfg.n_kv_heads * self.head_dim, cfg)
        self.wo = make_linear(cfg.n_heads * self.head_dim, cfg.dim, cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                start_pos: int | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]. With `start_pos`, keys/values go through `cache` (incremental decoding)."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if start_pos is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k, v = cache.update(k, v, start_pos)
            k, v = k.to(q.dtype), v.to(q.dtype)
            mask = None if t == 1 else decode_mask(start_pos, t, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
