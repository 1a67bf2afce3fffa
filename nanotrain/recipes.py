"""Named recipes: the original four runs (docs/original-runs.md) plus ablations, each at three scales.

A recipe is an architecture (ModelConfig fields on top of the scale's shape) plus schedule tweaks. Scales keep
the architecture and shrink the shape:
- full:  the original shapes (dim 1024, 20 layers, 16/4 heads, ffn 3072, vocab 4096, max_seq_len 1024), B=2, T=1024.
- small: ~30M params (dim 512, 10 layers), for a short GPU or long CPU run.
- tiny:  ~6M params (dim 256, 6 layers), trains meaningfully on 2 CPU cores in about 10 minutes.
Engram tables/widths and the wavefield field shrink with the scale (`SCALE_MODEL`). All optimisation settings of
a scale live in `SCALE_TRAIN`, the one table to tune; recipes only scale its warmup/total steps.
haar-v5 resumed haar-v3 at step 20000 and ran to 30000 in the original; here it trains from scratch for the
scale's standard length (10000 steps at full scale), like the other runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanotrain.config import ModelConfig, TrainConfig
from nanotrain.errors import UserError

SCALES = ("full", "small", "tiny")

# Shape of each scale: ModelConfig fields shared by every recipe.
SCALE_MODEL: dict[str, dict[str, Any]] = {
    "full": dict(dim=1024, n_layers=20, n_heads=16, n_kv_heads=4, ffn_mult=3.0, max_seq_len=1024,
                 engram_d_mem=128, engram_table_size=10007, wavefield_field_size=256, wavefield_haar_levels=6),
    "small": dict(dim=512, n_layers=10, n_heads=8, n_kv_heads=2, ffn_mult=3.0, max_seq_len=512,
                  engram_d_mem=64, engram_table_size=5003, wavefield_field_size=128, wavefield_haar_levels=5),
    "tiny": dict(dim=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_mult=3.0, max_seq_len=256,
                 engram_d_mem=32, engram_table_size=2503, wavefield_field_size=64, wavefield_haar_levels=4),
}

# Optimisation of each scale (TrainConfig fields). Recipes multiply warmup_steps/total_steps only.
SCALE_TRAIN: dict[str, dict[str, Any]] = {
    "full": dict(batch_size=2, seq_len=1024, total_steps=10000, warmup_steps=1500, lr=0.012, lion_lr=1e-4,
                 log_every=50, eval_every=500, eval_batches=20, ckpt_every=2000, dtype="bf16"),
    "small": dict(batch_size=8, seq_len=512, total_steps=4000, warmup_steps=400, lr=0.012, lion_lr=1e-4,
                  log_every=25, eval_every=250, eval_batches=10, ckpt_every=1000, dtype="bf16"),
    # tiny (tuned for the CPU quickstart): 4096 tokens/step so Muon's Newton-Schulz cost is spread over more
    # tokens; 600 steps = 2.46M tokens (on an idle 2-core Intel Xeon VM with --compile and 2 threads: ~4.9k tok/s;
    # 500 steps reached 1.338 val bits/byte, so the run was lengthened to 600). A 256-wide model trained for a few
    # hundred steps needs larger steps than the full scale's 275M/10k-step values: on rust-default, after 40 steps
    # of B=8, CE was 7.44 with (0.012, 1e-4), 6.68 with (0.03, 3e-4), 6.18 with (0.03, 1e-3) and 6.22 with
    # (0.06, 1e-3). eval_batches 16 x 16 x 256 = 65,536 tokens: the first 65,536 tokens of the val split, which
    # `nanoeval score` measures too by default (one val CE per checkpoint).
    "tiny": dict(batch_size=16, seq_len=256, total_steps=600, warmup_steps=30, lr=0.03, lion_lr=1e-3,
                 log_every=10, eval_every=100, eval_batches=16, ckpt_every=100, dtype="bf16"),
}


@dataclass(frozen=True)
class Recipe:
    """A named architecture + schedule. `model` holds ModelConfig overrides; callables get the scale's shape."""

    name: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    warmup_mult: float = 1.0
    steps_mult: float = 1.0
    resume_from: str | None = None

    def build(self, scale: str) -> tuple[ModelConfig, TrainConfig]:
        """(ModelConfig, TrainConfig) of this recipe at `scale` (full | small | tiny)."""
        if scale not in SCALES:
            raise UserError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
        shape = dict(SCALE_MODEL[scale])
        overrides = {k: (v(shape) if callable(v) else v) for k, v in self.model.items()}
        model_cfg = ModelConfig(**{**shape, **overrides})
        train = dict(SCALE_TRAIN[scale])
        train["warmup_steps"] = round(train["warmup_steps"] * self.warmup_mult)
        train["total_steps"] = round(train["total_steps"] * self.steps_mult)
        return model_cfg, TrainConfig(**train)


def _first_and_last(shape: dict[str, Any]) -> list[int]:
    """Engram layers of the seed: the first and the last layer ([0, 19] at full scale)."""
    return [0, shape["n_layers"] - 1]


def _loop_count(shape: dict[str, Any]) -> int:
    """LoopLM keeps the scale's effective depth: 2 local blocks before, 2 after, the rest looped (16 at full)."""
    return shape["n_layers"] - 4


_RECIPES = [
    Recipe("baseline", "plain GPT with mHC-lite: no MTP, no Engram, no wavefield (the original's 245M shape)"),
    Recipe("llama", "baseline with one residual stream instead of mHC-lite: plain Llama, which `nanoeval export` "
                    "writes as a native transformers LlamaForCausalLM", model=dict(mhc_streams=1)),
    Recipe("baseline-v1", "the seed's baseline-v1: baseline + 3 MTP heads (t+2..t+4, weight 0.2), warmup 2000",
           model=dict(mtp_heads=3), warmup_mult=2000 / 1500),
    Recipe("haar-v5", "the seed's haar-v5: wavefield Haar on every other layer, bidirectional (NOT causal), "
                      "trained from scratch",
           model=dict(wavefield_ratio=0.5, wavefield_mode="bidirectional")),
    Recipe("haar-causal", "haar-v5 with the causal wavefield variant (spec §3.6.1): usable for generation",
           model=dict(wavefield_ratio=0.5, wavefield_mode="causal")),
    Recipe("engram-v1", "the seed's engram-v1: hashed 2/3-gram memory on the first and last layer",
           model=dict(engram_layers=_first_and_last)),
    Recipe("engram-v2", "the seed's engram-v2: continues engram-v1's final checkpoint to 1.6x its steps",
           model=dict(engram_layers=_first_and_last), steps_mult=1.6, resume_from="engram-v1"),
    Recipe("engram-mtp", "engram-v1 + 3 MTP heads (the report's engram-mtp run)",
           model=dict(engram_layers=_first_and_last, mtp_heads=3)),
    Recipe("looplm", "LoopLM: 2 local blocks, one shared block looped (no RoPE), 2 local blocks; ExitGate logged",
           model=dict(loop_count=_loop_count, loop_local_before=2, loop_local_after=2)),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; UserError listing the valid names otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}") from None
