"""Optimisers (Muon, Lion), their parameter groups and the WSD LR schedule (docs/original-runs.md)."""

from nanotrain.optim.groups import (
    GroupInfo,
    Optimizers,
    build_optimizers,
    clip_grad_norm_,
    zero_wavefield_physics_grads,
)
from nanotrain.optim.lion import Lion
from nanotrain.optim.muon import Muon, newton_schulz
from nanotrain.optim.schedule import lr_multiplier, rewarm, wsd

__all__ = [
    "GroupInfo", "Lion", "Muon", "Optimizers", "build_optimizers", "clip_grad_norm_", "lr_multiplier",
    "newton_schulz", "rewarm", "wsd", "zero_wavefield_physics_grads",
]
