"""Grouped-query causal self-attention with RoPE and a static KV cache (docs/original-runs.md).

- Projections: `wqkv` [(n_heads + 2*n_kv_heads)*hd, dim] holds the q, k and v rows in that order (one matrix
  product instead of three; Muon still orthogonalises the three blocks one by one, see `row_blocks`), and `wo`
  [dim, n_heads*hd]; bias-free. Checkpoints with separate `wq`/`wk`/`wv` load through
  `nanotrain.model.fused.fuse_legacy_names`.
- RoPE, theta 10000, half-split pairing (x_i, x_{i+hd/2}):
  x'_i = x_i cos - x_{i+hd/2} sin,  x'_{i+hd/2} = x_i sin + x_{i+hd/2} cos,  angle = pos * theta^(-2i/hd),
  computed as x * (cos, cos) + (x_{hd/2:}, x_{:hd/2}) * (-sin, sin) from full-width tables.
- Attention through `F.scaled_dot_product_attention(..., enable_gqa=True)`.
  GQA mapping: query head h reads KV head h // (n_heads / n_kv_heads) (torch's grouped, `repeat_interleave`
  convention). The seed tiles instead (query head h reads KV head h mod n_kv_heads); the two only differ in how
  query heads are numbered, so importing seed weights needs the rows of `wq` (and columns of `wo`) permuted.
- The KV cache is a pair of preallocated buffers [B, n_kv, max_len, hd]. A cached call writes its keys and values
  at their positions (`nanotrain.model.cache`) and attends over the whole buffer under the mask key position <=
  query position, so every decode step has the same shapes. The cache is not part of the state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.cache import Positions, write_at
from nanotrain.model.quant import make_fused_linear, make_linear


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation tables [max_len, head_dim] for positions 0..max_len-1 (fp32): (cos, cos) and (-sin, sin), each
    half over one half of the head, so that `apply_rope` is x * cos + swap_halves(x) * sin."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] with half-split pairs, in fp32: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, computed
    as x * cos + (x2, x1) * sin with the tables of `rope_tables` ([T, hd], or [B, 1, T, hd] per row): three ops."""
    if x.dtype != torch.float32:
        out = _rotate(x.float(), cos, sin)
        return out.type_as(x)
    return _rotate(x, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


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

    def write(self, k: torch.Tensor, v: torch.Tensor, at: Positions) -> None:
        """Write k/v [B, n_kv, T, hd] at the call's positions."""
        if self.k is None:
            raise RuntimeError("KV cache not set up: call model.setup_cache(batch_size) before a cached forward")
        write_at(self.k, 2, at, k)
        write_at(self.v, 2, at, v)

    def keys(self, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first `rows` rows at positions 0..length-1 (views: no copy)."""
        k, v = self.k, self.v
        if rows != k.shape[0]:
            k, v = k[:rows], v[:rows]
        if length != k.shape[2]:
            k, v = k.narrow(2, 0, length), v.narrow(2, 0, length)
        return k, v


class Attention(nn.Module):
    """Causal GQA attention; RoPE is optional so the LoopLM shared block can run without it (spec §6.7)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        q_rows, kv_rows = cfg.n_heads * self.head_dim, cfg.n_kv_heads * self.head_dim
        self.wqkv = make_fused_linear(cfg.dim, (q_rows, kv_rows, kv_rows), cfg)
        self.wo = make_linear(cfg.n_heads * self.head_dim, cfg.dim, cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                at: Positions | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]. With `at`, keys/values go through `cache` (a cached forward)."""
        b, t, _ = x.shape
        h, hkv = self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x).view(b, t, h + 2 * hkv, self.head_dim).transpose(1, 2)
        qk, v = qkv.split((h + hkv, hkv), dim=1)
        if rope is not None:  # q and k heads rotated together: one set of kernels instead of two
            qk = apply_rope(qk, *rope)
        q, k = qk.split((h, hkv), dim=1)
        if at is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            cache.write(k, v, at)
            keys, values = cache.keys(b, at.length)
            if keys.dtype != q.dtype:
                keys, values = keys.to(q.dtype), values.to(q.dtype)
            if at.mask_free or at.square_causal:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=at.square_causal, enable_gqa=True)
            else:
                bias = at.bias if at.bias.dtype == q.dtype else at.bias.to(q.dtype)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, h * self.head_dim))
