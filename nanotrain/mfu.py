"""Model FLOPs utilisation: training FLOPs per token and the dense bf16 peak of the GPUs we know.

MFU = tok/s × FLOPs per token / peak. FLOPs per token = 6·N_matmul + 12·L·H·hd·T (PaLM, appendix B,
https://arxiv.org/abs/2204.02311; causal attention counted in full). N_matmul counts every weight of two or more
dimensions once (the tied embedding once, as the output head); Engram hash tables are lookups and are left out.
The Trainer logs MFU per log line and `benchmarks/bench_train.py` per variant; both are None on a CPU or an
unknown GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substrings (all must match); the first match wins. From the
# vendors' data sheets (H100/H200 SXM, H100 PCIe and NVL, B200, A100, GeForce RTX 4090).
PEAK_BF16_FLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),
    (("H200",), 989e12),
    (("B200",), 2.25e15),
    (("A100",), 312e12),
    (("4090",), 165.2e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU by its name (`torch.cuda.get_device_name`), else None."""
    for needles, peak in PEAK_BF16_FLOPS:
        if all(n.lower() in device_name.lower() for n in needles):
            return peak
    return None


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: weights of 2+ dimensions except Engram's lookup tables,
    each shared tensor counted once (the tied embedding as the output head)."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or id(p) in seen or ".tables." in name:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def flops_per_token(n_matmul: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> int:
    """Training (forward + backward) FLOPs per token: 6·N_matmul + 12·L·H·hd·T."""
    return 6 * n_matmul + 12 * n_layers * n_heads * head_dim * seq_len


def mfu(tok_per_s: float, flops_tok: float, peak: float | None) -> float | None:
    """The share of `peak` FLOP/s that `tok_per_s` tokens of `flops_tok` FLOPs each use; None without a peak."""
    return None if not peak else tok_per_s * flops_tok / peak
