"""The warmup-stable-decay (WSD) learning-rate schedule (docs/original-runs.md, "Schedule") and the re-warm used after
a resume.

Both are pure functions of the step, so a resumed run needs no scheduler state: the trainer multiplies every
group's base LR by the returned multiplier (`Optimizers.set_lr_scale`). The seed logged `lr = 0.012 * wsd(s)`
at step s, i.e. the LR of the update that follows step s; `wsd(0) == 0`, so nanolab's first update has LR 0 and
warms up from there (the original's first update used the full peak).
"""

from __future__ import annotations

import math

from nanotrain.config import TrainConfig


def decay_start(cfg: TrainConfig) -> int:
    """First step of the cosine decay: floor(total * (1 - decay_frac)) (seed: usize truncation of total*0.8)."""
    return int(math.floor(cfg.total_steps * (1.0 - cfg.decay_frac)))


def wsd(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at `step`: linear warmup from 0, flat at 1, then cosine down to `min_lr_ratio` at total_steps.

    mult(s) = s/w for s < w; 1 for s < d; m + ½(1−m)(1 + cos(π·min((s−d)/max(T−d, 1), 1))) afterwards,
    with w = warmup_steps, T = total_steps, d = `decay_start(cfg)`, m = min_lr_ratio. Steps past T stay at m.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return step / warmup
    d = decay_start(cfg)
    if step < d:
        return 1.0
    m = cfg.min_lr_ratio
    progress = min((step - d) / max(cfg.total_steps - d, 1), 1.0)
    return m + 0.5 * (1.0 - m) * (1.0 + math.cos(math.pi * progress))


def rewarm(step: int, resume_step: int, start_mult: float, cfg: TrainConfig) -> float:
    """Multiplier after a resume that changes the schedule: ramp linearly from `start_mult` (the multiplier the
    run had when it stopped) to `wsd(step)` over `cfg.rewarm_steps` steps, then follow `wsd` exactly.

    This replaces the seed's jump 0.0012 → 0.012 when a converged run was extended (engram-v2).
    At `step == resume_step` it returns `start_mult`; the target moves with the schedule during the ramp.
    """
    target = wsd(step, cfg)
    if cfg.rewarm_steps <= 0 or step >= resume_step + cfg.rewarm_steps:
        return target
    frac = max(step - resume_step, 0) / cfg.rewarm_steps
    return start_mult + frac * (target - start_mult)


def lr_multiplier(step: int, cfg: TrainConfig, resume_step: int | None = None,
                  start_mult: float | None = None) -> float:
    """The multiplier the trainer applies at `step` under `cfg.resume_lr`.

    A fresh run (no `resume_step`) and `resume_lr == "jump"` (the seed's behaviour) follow `wsd`; `"rewarm"`
    ramps from `start_mult` with `rewarm`.
    """
    if resume_step is None or cfg.resume_lr == "jump":
        return wsd(step, cfg)
    if cfg.resume_lr != "rewarm":
        raise ValueError(f"resume_lr must be 'rewarm' or 'jump', got {cfg.resume_lr!r}")
    if start_mult is None:
        raise ValueError("resume_lr='rewarm' needs start_mult (the LR multiplier when the run stopped)")
    return rewarm(step, resume_step, start_mult, cfg)
