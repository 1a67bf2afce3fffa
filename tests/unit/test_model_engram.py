"""Engram (docs/original-runs.md): primes, uint64-wrapping hashes against a Python-int reference, conv tap order,
cache."""

import random

import pytest
import torch

from nanotrain.config import ModelConfig
from nanotrain.model.engram import (
    SEED_PRIMES,
    VERIFIED_PRIMES,
    Engram,
    causal_depthwise_conv,
    hash_primes,
    ngram_hash_indices,
)


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (the first 12 primes as bases)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def has_small_factor(n: int) -> bool:
    """Trial division up to sqrt(n)."""
    f = 2
    while f * f <= n:
        if n % f == 0:
            return True
        f += 1
    return False


def reference_index(ids: list[int], t: int, n: int, i: int, primes, table_size: int) -> tuple[int, bool]:
    """Spec §4.2 with Python ints: returns (index, whether the uint64 wrapped)."""
    h, wrapped = 0, False
    for k in range(n):
        pos = t - (n - 1 - k)
        tok = ids[pos] if pos >= 0 else 0
        h = h * primes[(i + k) % 12] + tok
        wrapped |= h >= 2 ** 64
        h %= 2 ** 64
    return h % table_size, wrapped


def test_seed_constants_are_verbatim_and_three_are_composite():
    assert hash_primes("seed") == (2654435761, 2246822519, 3266489917, 668265263, 374761393, 2869860233,
                                   2654435771, 1103515243, 12347, 1664543, 1013904227, 6364136237)
    composite = [p for p in SEED_PRIMES if not is_prime(p)]
    assert composite == [2654435771, 1013904227, 6364136237]
    assert all(has_small_factor(p) for p in composite)


def test_verified_constants_are_all_prime():
    assert len(VERIFIED_PRIMES) == 12
    assert all(is_prime(p) for p in VERIFIED_PRIMES)
    assert all(not has_small_factor(p) for p in VERIFIED_PRIMES if p < 3 * 10 ** 9)
    assert is_prime(10007) and not is_prime(10007 * 3)


@pytest.mark.parametrize("kind", ["seed", "verified"])
def test_hash_matches_python_int_reference_including_uint64_wraparound(kind):
    primes = hash_primes(kind)
    rng = random.Random(0)
    batch = [[rng.randrange(65536) for _ in range(24)] for _ in range(3)]
    batch[0][:3] = [65535, 65535, 65535]
    batch[1][:4] = [2 ** 32 - 1, 70000, 2 ** 20 + 5, 65536]  # ids above 16 bits (vocabularies past 65,536)
    idx = ngram_hash_indices(torch.tensor(batch), None, [2, 3], 4, 10007, primes)
    assert idx.shape == (3, 24, 8) and idx.dtype == torch.int64
    wraps = 0
    for b, ids in enumerate(batch):
        for t in range(24):
            for order_idx, n in enumerate([2, 3]):
                for head in range(4):
                    i = order_idx * 4 + head
                    expected, wrapped = reference_index(ids, t, n, i, primes, 10007)
                    wraps += wrapped
                    assert idx[b, t, i].item() == expected, (b, t, i)
    assert wraps > 100  # the trigram hashes really overflow 64 bits


def test_hash_with_history_equals_the_slice_of_the_full_hash():
    ids = torch.randint(0, 4096, (2, 20))
    full = ngram_hash_indices(ids, None, [2, 3], 4, 10007, VERIFIED_PRIMES)
    part = ngram_hash_indices(ids[:, 9:], ids[:, 7:9], [2, 3], 4, 10007, VERIFIED_PRIMES)
    assert torch.equal(part, full[:, 9:])


def test_conv_tap_i_looks_i_steps_back_reverse_of_torch_conv1d():
    z = torch.randn(2, 10, 3)
    for tap in range(4):
        w = torch.zeros(3, 1, 4)
        w[:, 0, tap] = torch.tensor([1.0, 2.0, -1.0])
        y = causal_depthwise_conv(z, w)
        expected = torch.zeros_like(z)
        expected[:, tap:] = z[:, : 10 - tap] * w[:, 0, tap]
        torch.testing.assert_close(y, expected)
    w = torch.randn(3, 1, 4)
    torch_conv = torch.nn.functional.conv1d(torch.nn.functional.pad(z.transpose(1, 2), (3, 0)), w.flip(-1), groups=3)
    torch.testing.assert_close(causal_depthwise_conv(z, w), torch_conv.transpose(1, 2))


def test_forward_gates_per_token_and_adds_to_the_input():
    cfg = ModelConfig(dim=32, engram_d_mem=4, engram_table_size=101, vocab_size=50)
    torch.manual_seed(0)
    engram = Engram(cfg)
    assert [p.shape for p in engram.tables] == [(101, 4)] * 8
    assert engram.w_k.weight.shape == (32, 32) and engram.conv_weight.shape == (32, 1, 4)
    u = torch.randn(2, 6, 32)
    idx = ngram_hash_indices(torch.randint(0, 50, (2, 6)), None, [2, 3], 4, 101, VERIFIED_PRIMES)
    mem = torch.cat([engram.tables[i][idx[..., i]] for i in range(8)], dim=-1)
    k, v = engram.w_k(mem), engram.w_v(mem)
    alpha = torch.sigmoid((engram.gate_norm(u) * engram.key_norm(k)).sum(-1, keepdim=True) / 32 ** 0.5)
    expected = u + causal_depthwise_conv(alpha * v, engram.conv_weight)
    torch.testing.assert_close(engram(u, idx), expected)
