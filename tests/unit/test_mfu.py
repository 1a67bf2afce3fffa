"""nanotrain.mfu: the one peak table, FLOPs per token and MFU (the Trainer's log and bench_train.py use it)."""

from __future__ import annotations

import math

import torch

from nanotrain.mfu import flops_per_token, matmul_params, mfu, peak_bf16_flops


def test_peak_table_and_flops():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_bf16_flops("Intel(R) Xeon(R) Processor") is None
    assert flops_per_token(1000, 2, 4, 8, 16) == 6 * 1000 + 12 * 2 * 4 * 8 * 16
    assert mfu(100.0, 10, None) is None
    assert math.isclose(mfu(100.0, 10, 1000.0), 1.0)


def test_matmul_params_counts_tied_head_once_and_skips_tables():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # tied
            self.proj = torch.nn.Linear(4, 4, bias=True)
            self.engram = torch.nn.Module()
            self.engram.tables = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(7, 3))])

    assert matmul_params(Toy()) == 10 * 4 + 4 * 4


def test_trainer_uses_the_shared_functions():
    """The Trainer computes MFU with these functions, not copies of its own."""
    from nanotrain import train

    assert train.flops_per_token is flops_per_token and train.matmul_params is matmul_params
    assert train.peak_bf16_flops is peak_bf16_flops and train.model_flops_utilisation is mfu
