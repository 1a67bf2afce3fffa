"""Configuration dataclasses shared by nanotrain and nanoeval.

`ModelConfig` describes the network and `TrainConfig` the optimisation (docs/original-runs.md).
Both round-trip through plain JSON dicts so checkpoints stay readable and diffable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """The architecture. One `GPT` is assembled from this; every feature is switched on here."""

    vocab_size: int = 4096
    dim: int = 1024
    n_layers: int = 20
    n_heads: int = 16
    n_kv_heads: int = 4
    ffn_mult: float = 3.0
    ffn_multiple_of: int = 128          # SwiGLU hidden = dim*ffn_mult rounded up to this
    max_seq_len: int = 1024             # RoPE table length and KV-cache capacity
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # mHC-lite residual streams (spec §2.2-2.3); 1 = plain residual stream
    mhc_streams: int = 2
    mhc_init: str = "broken"            # "broken" (default, symmetry broken) | "seed" (original, a no-op mix)
    # Engram n-gram memory (spec §4)
    engram_layers: list[int] = field(default_factory=list)
    engram_orders: list[int] = field(default_factory=lambda: [2, 3])
    engram_heads: int = 4
    engram_d_mem: int = 128
    engram_table_size: int = 10007
    engram_conv_kernel: int = 4
    engram_primes: str = "verified"     # "verified" | "seed" (the original, partly composite constants)
    # Wavefield Haar attention (spec §3)
    wavefield_ratio: float = 0.0        # fraction of layers that are wavefield layers (0 = none)
    wavefield_mode: str = "bidirectional"  # "bidirectional" (faithful, non-causal) | "causal"
    wavefield_field_size: int = 256
    wavefield_haar_levels: int = 6
    wavefield_heads: int = 0            # 0 = n_heads
    wavefield_head_coupling: bool = True
    # Multi-token prediction (spec §5)
    mtp_heads: int = 0                  # 0 = off; 3 for baseline-v1 (predict t+2..t+4)
    mtp_weight: float = 0.2
    # LoopLM (spec §6.7); loop_count 0 = off
    loop_count: int = 0
    loop_local_before: int = 2
    loop_local_after: int = 2
    # Ternary quantisation-aware training (spec §2.1)
    quant: str = "none"                 # "none" | "ternary"
    quant_group_size: int = 128

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, d)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. LRs are peaks; the WSD schedule (spec §7) scales them."""

    total_steps: int = 10000            # schedule length (the decay ends here)
    warmup_steps: int = 1500
    decay_frac: float = 0.2             # cosine decay over the last 20%
    min_lr_ratio: float = 0.1
    lr: float = 0.012                   # Muon peak LR
    lion_lr: float = 1e-4               # Lion peak LR (embeddings, norms, 1-D, mHC, MTP)
    engram_lr_mult: float = 5.0         # multiplier for Engram parameters (ignored by the original)
    wavefield_physics_lr: float = 5e-4  # LR for wavefield physics params (ignored by the original)
    wavefield_warmup_delay: int = 1000  # physics params frozen for this many steps
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_shape_scaling: bool = False    # sqrt(max(1, rows/cols)) LR scaling; off in the original
    lion_betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    batch_size: int = 2
    seq_len: int = 1024
    grad_accum: int = 1
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int = 20
    ckpt_every: int = 2000
    keep_last: int = 3
    seed: int = 0
    dtype: str = "bf16"                 # autocast dtype where supported: "bf16" | "fp32"
    compile: bool = False
    resume_lr: str = "rewarm"           # "rewarm" | "jump" (the original's behaviour)
    rewarm_steps: int = 200

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        out = _from_dict(cls, d)
        out.lion_betas = tuple(out.lion_betas)  # JSON turns tuples into lists
        return out


def _from_dict(cls, d: dict[str, Any]):
    """Build a dataclass from a dict, refusing unknown keys (a typo must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    return cls(**d)


def dumps(obj: Any) -> str:
    """Stable, human-readable JSON for configs and reports."""
    return json.dumps(obj, indent=2, sort_keys=True)
