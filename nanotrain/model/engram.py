"""Engram: hashed n-gram memory added to the attention input of chosen layers (docs/original-runs.md).

Hashing (§4.2). For table i (order n = orders[i // heads], i = order_idx*heads + head) at position t:
    h = 0;  for k in 0..n-1:  h = h * P[(i+k) mod 12] + ids[t-(n-1-k)]   (uint64, wrapping)
    index = h mod table_size,  with ids before position 0 read as 0 (<pad>).
The n-gram ends at t, so it includes the current token and is causal. Since h starts at 0, the loop equals
h = sum_k ids[t-(n-1-k)] * prod_{j>k} P[(i+j) mod 12] (mod 2^64), so the products of primes are constants made
once (`hash_tables`). torch has no uint64 arithmetic, so the hash runs on the model's device in int64 ops on
16-bit limbs (limb products, explicit carries, the carry out of bit 64 dropped): exactly uint64 wraparound
without relying on signed overflow.
`engram_primes="seed"` uses the seed's 12 constants verbatim (3 are composite); "verified" (default) replaces
each composite by the next prime above it. Tests check primality of every verified constant.

Forward (§4.3), on u = the mHC-prepared attention input [B, T, dim]:
    c = concat_i tables[i][index_i]          (order-major, head-minor; 8 * d_mem features)
    k = w_k(c), v = w_v(c)
    a_t = sigmoid(<gate_norm(u_t), key_norm(k_t)> / sqrt(dim))   (one scalar per token)
    z_t = a_t * v_t
    y_t = sum_{i=0}^{K-1} conv_weight[:, 0, i] * z_{t-i}          (tap i looks i steps back; zeros before 0)
    out = u + y
For a cached forward the conv inputs z are kept in a per-position cache buffer [B, max_len, dim], like the KV
cache, so a decode step computes z only for the new tokens and reads the K-1 previous ones from the cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanotrain.config import ModelConfig
from nanotrain.model.cache import Positions, read_before, write_at
from nanotrain.model.norm import RMSNorm
from nanotrain.model.quant import make_linear

SEED_PRIMES: tuple[int, ...] = (
    2654435761, 2246822519, 3266489917, 668265263, 374761393, 2869860233,
    2654435771, 1103515243, 12347, 1664543, 1013904227, 6364136237,
)
VERIFIED_PRIMES: tuple[int, ...] = (
    2654435761, 2246822519, 3266489917, 668265263, 374761393, 2869860233,
    2654435789, 1103515243, 12347, 1664543, 1013904263, 6364136249,
)
LIMB_BITS = 16
LIMB_MASK = (1 << LIMB_BITS) - 1
N_LIMBS = 64 // LIMB_BITS


def hash_primes(kind: str) -> tuple[int, ...]:
    """The 12 hash multipliers: "seed" (the original constants) or "verified" (all prime)."""
    if kind == "seed":
        return SEED_PRIMES
    if kind == "verified":
        return VERIFIED_PRIMES
    raise ValueError(f"engram_primes must be 'seed' or 'verified', got {kind!r}")


def _coefficients(orders: list[int], heads: int, primes: tuple[int, ...]) -> list[list[int]]:
    """C[k][i] = prod_{j=k+1}^{n-1} P[(i+j) mod 12] mod 2^64 for table i of order n, aligned so that k = K-1 is
    the current token (K = max order); 0 where the table's n-gram does not reach back k steps.

    The hash loop h = h * P + x starts from h = 0, so it equals sum_k x_k * C[k] (mod 2^64)."""
    window = max(orders)
    coeffs = [[0] * (len(orders) * heads) for _ in range(window)]
    for order_idx, n in enumerate(orders):
        for head in range(heads):
            i = order_idx * heads + head
            for k in range(n):
                c = 1
                for j in range(k + 1, n):
                    c = c * primes[(i + j) % len(primes)] % (1 << 64)
                coeffs[window - n + k][i] = c
    return coeffs


def hash_tables(orders: list[int], heads: int, primes: tuple[int, ...]) -> torch.Tensor:
    """The constants for hashing all tables at once: [max_order, n_tables, N_LIMBS] int64, each coefficient of
    `_coefficients` as 16-bit limbs, least significant first (the model keeps it as a buffer, so a decode step
    builds nothing)."""
    coeffs = _coefficients(orders, heads, primes)
    return torch.tensor([[[(c >> (LIMB_BITS * j)) & LIMB_MASK for j in range(N_LIMBS)] for c in row]
                         for row in coeffs], dtype=torch.long)


def ngram_hash_indices(ids: torch.Tensor, history: torch.Tensor | None, orders: list[int], heads: int,
                       table_size: int, primes: tuple[int, ...]) -> torch.Tensor:
    """Table indices [B, T, len(orders)*heads] for the tokens `ids` [B, T].

    `history` [B, max(orders)-1] holds the tokens just before ids[:, 0] (zeros = before the sequence start);
    None means the sequence starts at ids[:, 0].
    """
    return hash_indices(ids, history, hash_tables(orders, heads, primes).to(ids.device), table_size)


def hash_indices(ids: torch.Tensor, history: torch.Tensor | None, coeffs: torch.Tensor,
                 table_size: int) -> torch.Tensor:
    """`ngram_hash_indices` with the constants of `hash_tables` given: all tables hashed together in ~30 tensor
    ops, however many tables and tokens.

    Token ids (< 2^32) are split into two 16-bit limbs; every limb product is < 2^32 and a limb sums at most
    2 * max_order of them, far inside int64. Carries then run from the lowest limb up, the carry out of bit 64
    is dropped (uint64 wraparound), and the four limbs reduce modulo `table_size` (< 2^31) with 2^(16j) mod m."""
    ids = ids.long()
    window = coeffs.shape[0]
    if history is None:
        history = torch.zeros(ids.shape[0], window - 1, dtype=torch.long, device=ids.device)
    grams = torch.cat((history.long(), ids), dim=1).unfold(1, window, 1)  # [B, T, K]: tokens t-K+1 .. t
    lo = ((grams & LIMB_MASK)[..., None, None] * coeffs).sum(dim=2)  # [B, T, n_tables, N_LIMBS]
    hi = ((grams >> LIMB_BITS)[..., None, None] * coeffs[..., :-1]).sum(dim=2)  # lands one limb up
    limbs = lo.unbind(-1)
    highs = hi.unbind(-1)
    carry = None
    total = None
    for j in range(N_LIMBS):
        limb = limbs[j] if j == 0 else limbs[j] + highs[j - 1]
        if carry is not None:
            limb = limb + carry
        carry = limb >> LIMB_BITS
        term = (limb & LIMB_MASK) * pow(2, LIMB_BITS * j, table_size)
        total = term if total is None else total + term
    return total % table_size


def causal_depthwise_conv(z: torch.Tensor, weight: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
    """y_t = sum_i weight[:, 0, i] * z_{t-i} over z [B, T, C]; `past` [B, K-1, C] precedes z (zeros if None)."""
    k = weight.shape[-1]
    if past is None:
        past = z.new_zeros(z.shape[0], k - 1, z.shape[2])
    padded = torch.cat((past.to(z.dtype), z), dim=1)
    t = z.shape[1]
    y = torch.zeros_like(z)
    for i in range(k):
        y = y + weight[:, 0, i] * padded[:, k - 1 - i: k - 1 - i + t]
    return y


class Engram(nn.Module):
    """Hashed n-gram memory with a scalar content gate and a short causal conv (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n_tables = len(cfg.engram_orders) * cfg.engram_heads
        self.dim = cfg.dim
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.engram_table_size, cfg.engram_d_mem) * cfg.init_std)
            for _ in range(n_tables)
        )
        self.w_k = make_linear(n_tables * cfg.engram_d_mem, cfg.dim, cfg)
        self.w_v = make_linear(n_tables * cfg.engram_d_mem, cfg.dim, cfg)
        self.gate_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.key_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        kernel = cfg.engram_conv_kernel
        self.conv_weight = nn.Parameter(torch.randn(cfg.dim, 1, kernel) * math.sqrt(1.0 / kernel))
        self.register_buffer("conv_cache", None, persistent=False)

    def setup_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        self.conv_cache = torch.zeros(batch_size, max_len, self.dim, device=device, dtype=dtype)

    def clear_cache(self) -> None:
        self.conv_cache = None

    def gated_values(self, u: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """z = sigmoid(gate) * v [B, T, dim], the conv's input, for u [B, T, dim] and indices [B, T, n_tables]."""
        mem = torch.cat([table[indices[..., i]] for i, table in enumerate(self.tables)], dim=-1)
        k = self.w_k(mem)
        v = self.w_v(mem)
        gate = (self.gate_norm(u) * self.key_norm(k)).sum(dim=-1, keepdim=True) / math.sqrt(self.dim)
        return torch.sigmoid(gate) * v

    def forward(self, u: torch.Tensor, indices: torch.Tensor, at: Positions | None = None) -> torch.Tensor:
        """u [B, T, dim], indices [B, T, n_tables] -> u + y. With `at`, the conv reads earlier z from the cache."""
        z = self.gated_values(u, indices)
        past = None
        if at is not None:
            if self.conv_cache is None:
                raise RuntimeError("Engram cache not set up: call model.setup_cache(batch_size) first")
            write_at(self.conv_cache, 1, at, z)
            past = read_before(self.conv_cache, at, self.conv_weight.shape[-1] - 1)
        return u + causal_depthwise_conv(z, self.conv_weight, past)
