"""Process-group glue for `torchrun --nproc_per_node N -m nanotrain run ...` (docs/ARCHITECTURE.md).

One run across W processes: gloo on CPU, NCCL on GPU. Rank r reads rows r·B:(r+1)·B of every global batch
(`WindowLoader(rank, world_size)`), DDP averages gradients so every rank runs the same optimizer step (Muon's
Newton–Schulz included) on the same averaged gradients, and rank 0 alone logs and writes checkpoints.
Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanotrain.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` (UserError without that GPU) or `auto` (cuda when available)."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise UserError(f"--device {choice}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
        raise UserError(f"--device {choice}: no CUDA GPU is visible to torch{build}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def init_distributed(device_choice: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (if any) and pick this rank's device."""
    device = resolve_device(device_choice)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        # The cores are shared between the ranks on this machine; oversubscribing them makes every rank slower.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum, mean, min or max) across ranks; identity on one process."""
    if info.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(t, op=ops[op])
        if op == "mean":
            t.div_(info.world_size)
    return t


def wrap_model(model: torch.nn.Module, info: DistInfo, unused_parameters: bool = False) -> torch.nn.Module:
    """DDP-wrap the model on several ranks (gradients averaged during backward); the model itself otherwise.

    `unused_parameters`: some parameters get no gradient (LoopLM's ExitGate), which DDP must be told about.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=unused_parameters)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
