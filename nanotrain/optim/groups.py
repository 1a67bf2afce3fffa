"""Which parameter goes to which optimizer, at which LR (docs/original-runs.md, "Optimisers" and the fixes it lists).

Rule, applied to `model.named_parameters()` (tied weights appear once):
- wavefield physics params (`omega, alpha_raw, phi, coupling_logits, kernel_haar_coeffs` under `.wavefield.`)
  → Lion at `wavefield_physics_lr`. They are per-head physics constants, not hidden matrices: the seed sent
  the two rank-2 ones to Muon at 0.012 and never used the configured physics LR (§3.3); we honour it.
- rank ≤ 1, rank 2 with dim0 == vocab_size (tied embedding/head), mHC params (`mhc_*`) and MTP params
  (`mtp.*`) → Lion at `lion_lr`.
- every other parameter (rank ≥ 2; 3-D ones such as the Engram conv weight are flattened to 2-D) → Muon at `lr`.
- Engram params (`.engram.`) keep their optimizer but get its LR × `engram_lr_mult` (ignored by the seed).

`Optimizers` bundles the two optimizers; its state dict is keyed by parameter name, so a resume does not
depend on parameter order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nanotrain.config import TrainConfig
from nanotrain.errors import UserError
from nanotrain.model.fused import fuse_legacy_names, stack_rows
from nanotrain.optim.lion import Lion
from nanotrain.optim.muon import Muon

WAVEFIELD_PHYSICS = frozenset({"omega", "alpha_raw", "phi", "coupling_logits", "kernel_haar_coeffs"})
STATE_FORMAT = 1


class GroupInfo(NamedTuple):
    """One optimizer group, for logging: `n_params` counts scalar elements, `base_lr` is the peak LR."""

    name: str
    optimizer: str
    n_params: int
    base_lr: float


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers, so names match."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def is_wavefield_physics(name: str) -> bool:
    """True for the wavefield physics params that the warmup delay freezes and the physics LR drives."""
    parts = name.split(".")
    return "wavefield" in parts[:-1] and parts[-1] in WAVEFIELD_PHYSICS


def _vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "vocab_size"):
        return int(cfg.vocab_size)
    embed = getattr(model, "tok_embed", None)
    if embed is not None:
        return int(embed.weight.shape[0])
    raise ValueError("cannot tell the vocabulary size: the model has neither .cfg.vocab_size nor .tok_embed")


def assign_group(name: str, param: Tensor, vocab_size: int) -> tuple[str, str]:
    """(group name, optimizer name) for one parameter under the rule in the module docstring."""
    if is_wavefield_physics(name):
        return "lion_wavefield_physics", "lion"
    parts = name.split(".")
    use_lion = (
        param.ndim <= 1
        or (param.ndim == 2 and param.shape[0] == vocab_size)
        or any(p.startswith("mhc") for p in parts[:-1])
        or parts[0] == "mtp"
    )
    opt = "lion" if use_lion else "muon"
    return (f"{opt}_engram" if "engram" in parts[:-1] else opt), opt


def _base_lr(group: str, cfg: TrainConfig) -> float:
    if group == "lion_wavefield_physics":
        return cfg.wavefield_physics_lr
    lr = cfg.lion_lr if group.startswith("lion") else cfg.lr
    return lr * cfg.engram_lr_mult if group.endswith("_engram") else lr


class Optimizers:
    """Muon + Lion over one model, driven as one optimizer by the trainer."""

    def __init__(self, muon: Muon | None, lion: Lion | None, names: dict[Tensor, str]) -> None:
        self.muon = muon
        self.lion = lion
        self._names = names
        self.lr_scale = 1.0

    def _optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(n, o) for n, o in (("muon", self.muon), ("lion", self.lion)) if o is not None]

    def step(self, ok: Tensor | None = None) -> None:
        """Muon, then Lion (the seed's order); gradients must already be clipped. `ok`: a 0-dim bool tensor on
        the device; where it is false the step changes nothing (see `nanotrain.optim.gate`)."""
        for _, opt in self._optimizers():
            opt.step(ok=ok)

    def zero_grad(self) -> None:
        for _, opt in self._optimizers():
            opt.zero_grad(set_to_none=True)

    def set_lr_scale(self, mult: float) -> None:
        """Set every group's LR to its base (peak) LR × `mult`, e.g. the WSD multiplier of this step."""
        self.lr_scale = float(mult)
        for _, opt in self._optimizers():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * self.lr_scale

    def describe(self) -> list[GroupInfo]:
        """One entry per group: (name, optimizer, number of scalar params, base LR), for the run log."""
        return [GroupInfo(g["name"], opt_name, sum(p.numel() for p in g["params"]), g["base_lr"])
                for opt_name, opt in self._optimizers() for g in opt.param_groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All groups of both optimizers (torch param-group dicts with `name`, `base_lr`, `lr`, `params`)."""
        return [g for _, opt in self._optimizers() for g in opt.param_groups]

    def parameters(self) -> list[Tensor]:
        """Every parameter the optimizers update."""
        return [p for _, opt in self._optimizers() for g in opt.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state keyed by parameter name: {"muon": {name: {buffer: tensor}}, "lion": {...}, ...}.

        Buffers are copied to the CPU, so the result is a snapshot that loads anywhere (`load_state_dict`
        copies them back onto each parameter's device).
        """
        out: dict[str, Any] = {"format": STATE_FORMAT, "lr_scale": self.lr_scale}
        for opt_name, opt in self._optimizers():
            out[opt_name] = {self._names[p]: {k: v.detach().to("cpu", copy=True) for k, v in opt.state[p].items()}
                             for g in opt.param_groups for p in g["params"]}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore buffers saved by `state_dict` (any device) into this model's optimizers, by name.

        Raises UserError when the saved state does not fit this model (other parameters, optimizer or shapes).
        """
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        if found != STATE_FORMAT:
            raise UserError(f"optimizer state: unknown format {found!r}, expected {STATE_FORMAT}")
        copies: list[tuple[Tensor, Tensor]] = []          # validate everything before touching any buffer
        for opt_name in ("muon", "lion"):
            opt = dict(self._optimizers()).get(opt_name)
            saved = fuse_legacy_names(state.get(opt_name, {}), _stack_buffers)  # older states: separate q/k/v
            mine = {} if opt is None else {self._names[p]: p for g in opt.param_groups for p in g["params"]}
            missing, unexpected = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
            if missing or unexpected:
                raise UserError(f"optimizer state ({opt_name}) does not match the model: "
                                f"missing {_few(missing)}, unexpected {_few(unexpected)}")
            for name, p in mine.items():
                for key, buf in opt.state[p].items():
                    src = saved[name].get(key)
                    if not isinstance(src, Tensor) or src.shape != buf.shape:
                        raise UserError(f"optimizer state ({opt_name}): {name}.{key} is missing or has the wrong "
                                        f"shape (expected {tuple(buf.shape)})")
                    copies.append((buf, src))
        for buf, src in copies:
            buf.copy_(src)
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))


def _stack_buffers(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The per-parameter buffers of a fused weight from those of its separate parts (rows in order)."""
    return {key: stack_rows([part[key] for part in parts]) for key in parts[0]}


def _few(names: list[str], n: int = 3) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def default_ns_dtype(device: torch.device, train_dtype: str) -> torch.dtype | None:
    """Muon's Newton–Schulz precision for a run: bf16 on a CPU when the run trains in bf16 and the CPU multiplies
    bf16 natively through oneDNN (there it took 46 ms against 169 ms in fp32 for a tiny engram-v1 step's
    orthogonalisations on an AMD EPYC VM); None otherwise, which is Muon's own choice: bf16 on CUDA, fp32 elsewhere
    (an fp32 run, such as the regression runs, keeps fp32 on a CPU)."""
    if device.type == "cpu" and train_dtype == "bf16" and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def build_optimizers(model: nn.Module, train_cfg: TrainConfig, ns_dtype: torch.dtype | None = None) -> Optimizers:
    """Group the model's trainable parameters (rule above) and build Muon + Lion with per-group base LRs.

    Call it after the model is on its device (optimizer state is created next to each parameter). LRs start at
    their peaks (`lr_scale` 1); the trainer calls `set_lr_scale(wsd(step))` before each step.
    `ns_dtype` is Muon's Newton–Schulz precision (None: `default_ns_dtype`).
    """
    model = unwrap_model(model)
    if ns_dtype is None:
        first = next(model.parameters(), None)
        ns_dtype = default_ns_dtype(first.device if first is not None else torch.device("cpu"), train_cfg.dtype)
    vocab = _vocab_size(model)
    groups: dict[str, dict[str, Any]] = {}
    names: dict[Tensor, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group, opt = assign_group(name, p, vocab)
        groups.setdefault(group, {"opt": opt, "params": []})["params"].append(p)
        names[p] = name
    order = ["muon", "muon_engram", "lion", "lion_engram", "lion_wavefield_physics"]

    def param_groups(opt: str) -> list[dict[str, Any]]:
        return [{"params": groups[g]["params"], "name": g, "base_lr": _base_lr(g, train_cfg),
                 "lr": _base_lr(g, train_cfg)} for g in order if g in groups and groups[g]["opt"] == opt]

    muon_groups, lion_groups = param_groups("muon"), param_groups("lion")
    muon = Muon(muon_groups, momentum=train_cfg.muon_momentum, nesterov=train_cfg.muon_nesterov,
                ns_steps=train_cfg.muon_ns_steps, weight_decay=train_cfg.weight_decay,
                shape_scaling=train_cfg.muon_shape_scaling, ns_dtype=ns_dtype) if muon_groups else None
    lion = Lion(lion_groups, betas=tuple(train_cfg.lion_betas),
                weight_decay=train_cfg.weight_decay) if lion_groups else None
    return Optimizers(muon, lion, names)


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale gradients so their global L2 norm is at most `max_norm`; return the pre-clip norm as a tensor.

    The norm is over ALL given parameters (the seed left the MTP heads out — our fix), computed without a host
    sync. `max_norm <= 0` only measures.
    """
    params = list(params)
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


@torch.no_grad()
def zero_wavefield_physics_grads(model: nn.Module) -> None:
    """Zero the gradients of the wavefield physics params (the warmup delay, docs/original-runs.md): with zero
    gradients and zero state, Lion leaves them exactly unchanged."""
    grads = [p.grad for n, p in unwrap_model(model).named_parameters()
             if is_wavefield_physics(n) and p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
