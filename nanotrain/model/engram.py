"""Engram: hashed n-gram memory added to the attention input of chosen layers (docs/original-runs.md).

Hashing (§4.2). For table i (order n = orders[i // heads], i = order_idx*heads + head) at position t:
    h = 0;  for k in 0..n-1:  h = h * P[(i+k) mod 12] + ids[t-(n-1-k)]   (uint64, wrapping)
    index = h mod table_size,  with ids before position 0 read as 0 (<pad>).
The n-gram ends at t, so it includes the current token and is causal. torch has no uint64 arithmetic, so the
hash runs on the model's device in int64 ops on four 16-bit limbs (schoolbook multiply, explicit carries, the
carry out of bit 64 dropped): exactly uint64 wraparound without relying on signed overflow.
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


def _to_limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """A non-negative int64 tensor (< 2^63) as four 16-bit limbs, least significant first."""
    return [(x >> (LIMB_BITS * j)) & LIMB_MASK for j in range(N_LIMBS)]


def _carry(limbs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Propagate carries so every limb is < 2^16; the carry out of the top limb (bit 64) is dropped."""
    out = []
    carry = torch.zeros_like(limbs[0])
    for limb in limbs:
        total = limb + carry
        out.append(total & LIMB_MASK)
        carry = total >> LIMB_BITS
    return out


def _mul_add_u64(limbs: list[torch.Tensor], mult: torch.Tensor, add: torch.Tensor) -> list[torch.Tensor]:
    """(limbs * mult + add) mod 2^64, elementwise. `mult` [N_LIMBS, n_tables] holds each table's multiplier as
    16-bit limbs and broadcasts over the last dim of `limbs`/`add`; `add` is a non-negative tensor."""
    prod = []
    for k in range(N_LIMBS):
        acc = add if k == 0 else torch.zeros_like(add)
        for j in range(k + 1):
            acc = acc + limbs[k - j] * mult[j]
        prod.append(acc)
    # Each partial sum is below 4 * 2^32 + max(add), far inside int64.
    return _carry(prod)


def _mod_u64(limbs: list[torch.Tensor], modulus: int) -> torch.Tensor:
    """The uint64 held in `limbs`, reduced modulo `modulus` (< 2^31), as int64."""
    total = torch.zeros_like(limbs[0])
    for j, limb in enumerate(limbs):
        total = total + limb * (pow(2, LIMB_BITS * j, modulus))
    return total % modulus


def hash_tables(orders: list[int], heads: int, primes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """([max_order, N_LIMBS, n_tables] multipliers, [n_tables] orders): the constants for hashing all tables at once
    (the model keeps them as buffers, so a decode step builds nothing).

    Every table runs max(orders) steps so all tables hash in one vectorised pass: a table of order n < max
    starts with max-n dummy steps that see token 0 and keep h at 0 (0*P + 0), then its real steps k = 0..n-1
    use P[(i+k) mod 12] as in the seed.
    """
    steps = max(orders)
    table = torch.zeros(steps, N_LIMBS, len(orders) * heads, dtype=torch.long)
    for order_idx, n in enumerate(orders):
        for head in range(heads):
            i = order_idx * heads + head
            for k in range(n):
                prime = primes[(i + k) % len(primes)]
                for j in range(N_LIMBS):
                    table[steps - n + k, j, i] = (prime >> (LIMB_BITS * j)) & LIMB_MASK
    # the order of each table, so a table of order n sees token 0 during its max-n dummy steps
    table_order = torch.tensor([n for n in orders for _ in range(heads)])
    return table, table_order


def ngram_hash_indices(ids: torch.Tensor, history: torch.Tensor | None, orders: list[int], heads: int,
                       table_size: int, primes: tuple[int, ...]) -> torch.Tensor:
    """Table indices [B, T, len(orders)*heads] for the tokens `ids` [B, T].

    `history` [B, max(orders)-1] holds the tokens just before ids[:, 0] (zeros = before the sequence start);
    None means the sequence starts at ids[:, 0].
    """
    mult, table_order = hash_tables(orders, heads, primes)
    return hash_indices(ids, history, mult.to(ids.device), table_order.to(ids.device), table_size)


def hash_indices(ids: torch.Tensor, history: torch.Tensor | None, mult: torch.Tensor, table_order: torch.Tensor,
                 table_size: int) -> torch.Tensor:
    """`ngram_hash_indices` with the constants of `hash_tables` given. All tables are hashed together (a fixed
    ~100 tensor ops however many tables), which keeps a decode step cheap."""
    ids = ids.long()
    ctx = mult.shape[0] - 1
    if history is None:
        history = torch.zeros(ids.shape[0], ctx, dtype=torch.long, device=ids.device)
    full = torch.cat((history.long(), ids), dim=1)
    t = ids.shape[1]
    h = _to_limbs(torch.zeros(*ids.shape, mult.shape[-1], dtype=torch.long, device=ids.device))
    for step in range(ctx + 1):
        back = ctx - step
        tok = full[:, ctx - back: ctx - back + t].unsqueeze(-1)
        tok = torch.where(table_order > back, tok, torch.zeros_like(tok))
        h = _mul_add_u64(h, mult[step], tok)
    return _mod_u64(h, table_size)


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
            past = read_before(self.conv_cache, at.pos[:, 0], self.conv_weight.shape[-1] - 1)
        return u + causal_depthwise_conv(z, self.conv_weight, past)
