"""`nanotrain schedule RECIPE`: print (and optionally plot) a recipe's WSD learning rates (docs/original-runs.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from nanotrain.config import TrainConfig
from nanotrain.errors import UserError
from nanotrain.plots import check_figure_path, pyplot, save_figure
from nanotrain.recipes import SCALES


def register(sub) -> None:
    p = sub.add_parser(
        "schedule",
        help="print a recipe's learning-rate schedule (Muon and Lion LR per step)",
        description="Print the warmup-stable-decay schedule of a recipe at one scale (--scale, default full): the "
                    "multiplier and the Muon and Lion learning rates at chosen steps. The LR shown at step s is the "
                    "one the update after step s uses (as the original logged it). Engram groups use these LRs "
                    "times engram_lr_mult; wavefield physics params use wavefield_physics_lr times the multiplier.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe name (see `nanotrain recipes`)")
    p.add_argument("--scale", choices=SCALES, default="full",
                   help="the scale whose schedule to show, as `nanotrain run --scale` trains it (default: full)")
    p.add_argument("--total-steps", type=int, default=None, metavar="N",
                   help="schedule length (default: the recipe's); the cosine decay ends here")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="warmup steps (default: the recipe's)")
    p.add_argument("--at", type=int, nargs="+", default=None, metavar="S",
                   help="show these steps (together with --every, if given)")
    p.add_argument("--every", type=int, default=None, metavar="N",
                   help="show steps 0, N, 2N, ... up to the total (default: about 20 rows plus the phase edges)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE",
                   help="also draw the whole schedule to FILE (.png, .svg or .pdf; needs matplotlib)")
    p.set_defaults(func=_run)


@dataclass
class Resume:
    """A recipe that continues another one's final checkpoint (engram-v2 continues engram-v1)."""

    parent: str
    parent_cfg: TrainConfig
    step: int              # the parent's last step, where this run starts
    start_mult: float      # the parent's multiplier there: where a re-warm starts


def _run(args: argparse.Namespace) -> int:
    from nanotrain.optim.schedule import decay_start, wsd
    from nanotrain.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    _, cfg = recipe.build(args.scale)
    if args.total_steps is not None:
        if args.total_steps < 1:
            raise UserError(f"--total-steps {args.total_steps}: must be at least 1")
        cfg.total_steps = args.total_steps
    if args.warmup is not None:
        if args.warmup < 0:
            raise UserError(f"--warmup {args.warmup}: must be >= 0")
        cfg.warmup_steps = args.warmup
    resume = None
    if recipe.resume_from:
        _, parent_cfg = get_recipe(recipe.resume_from).build(args.scale)
        resume = Resume(recipe.resume_from, parent_cfg, parent_cfg.total_steps,
                        wsd(parent_cfg.total_steps, parent_cfg))
    first = resume.step if resume is not None and resume.step < cfg.total_steps else 0
    edges = [cfg.warmup_steps, decay_start(cfg), cfg.total_steps]
    if resume is not None and cfg.resume_lr == "rewarm":
        edges.append(resume.step + cfg.rewarm_steps)
    steps = schedule_steps(cfg.total_steps, edges, args.at, args.every, first=first)
    plot = check_figure_path(args.plot, "--plot") if args.plot is not None else None

    print(f"recipe {args.recipe} ({args.scale} scale): warmup {cfg.warmup_steps}, total {cfg.total_steps}, "
          f"cosine decay from step {decay_start(cfg)} to {cfg.min_lr_ratio:g} x peak")
    print(f"peak LR: Muon {cfg.lr:g}, Lion {cfg.lion_lr:g} (engram groups x{cfg.engram_lr_mult:g}, "
          f"wavefield physics {cfg.wavefield_physics_lr:g})")
    if resume is not None:
        how = (f"re-warms linearly from {resume.start_mult:g} x peak over {cfg.rewarm_steps} steps"
               if cfg.resume_lr == "rewarm" else "jumps straight to the schedule (resume_lr='jump')")
        print(f"continues {resume.parent}'s final checkpoint (step {resume.step}) and {how}; "
              f"rows before step {resume.step} are {resume.parent}'s")
    print()
    print(f"{'step':>8}  {'phase':<10}  {'multiplier':>10}  {'muon_lr':>10}  {'lion_lr':>10}")
    for s in steps:
        phase, m = multiplier(s, cfg, resume)
        print(f"{s:>8}  {phase:<10}  {m:>10.6f}  {cfg.lr * m:>10.6f}  {cfg.lion_lr * m:>10.3e}")
    if plot is not None:
        plot_schedule(cfg, plot, title=f"{args.recipe} ({args.scale}): learning-rate schedule", resume=resume)
        print(f"\nwrote {plot}")
    return 0


def multiplier(step: int, cfg: TrainConfig, resume: Resume | None = None) -> tuple[str, float]:
    """(phase, LR multiplier) of the update after `step`, as the trainer computes it for this recipe."""
    from nanotrain.optim.schedule import decay_start, lr_multiplier, wsd

    if resume is not None and step < resume.step:
        return resume.parent, wsd(step, resume.parent_cfg)
    if resume is not None:
        m = lr_multiplier(step, cfg, resume.step, resume.start_mult)
        if cfg.resume_lr == "rewarm" and step < resume.step + cfg.rewarm_steps:
            return "rewarm", m
    else:
        m = wsd(step, cfg)
    if step < cfg.warmup_steps:
        return "warmup", m
    return ("stable" if step < decay_start(cfg) else "decay"), m


def schedule_steps(total: int, edges: list[int], at: list[int] | None, every: int | None,
                   first: int = 0) -> list[int]:
    """The steps to print: `at`, multiples of `every` up to `total`, or by default ~20 rows from `first` to
    `total` plus the phase `edges` in that range."""
    if at is not None and any(s < 0 for s in at):
        raise UserError(f"--at {' '.join(map(str, at))}: steps must be >= 0")
    if every is not None and every < 1:
        raise UserError(f"--every {every}: must be at least 1")
    chosen: set[int] = set(at or [])
    if every is not None:
        chosen.update(range(0, total + 1, every))
        chosen.add(total)
    if at is None and every is None:
        chosen.update(range(first, total + 1, max(1, (total - first) // 20)))
        chosen.update(s for s in edges if first <= s <= total)
    return sorted(chosen)


def plot_schedule(cfg: TrainConfig, path: Path, title: str, resume: Resume | None = None) -> None:
    """Draw Muon and Lion LR over the whole schedule to `path`, written to a temporary file and renamed."""
    plt = pyplot("--plot")
    n = cfg.total_steps
    xs = sorted(set(range(0, n + 1, max(1, n // 2000))) | {n})
    mult = [multiplier(s, cfg, resume)[1] for s in xs]
    fig, (ax_m, ax_l) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    ax_m.plot(xs, [cfg.lr * m for m in mult], color="tab:blue")
    ax_m.set_ylabel("Muon LR")
    ax_l.plot(xs, [cfg.lion_lr * m for m in mult], color="tab:orange")
    ax_l.set_ylabel("Lion LR")
    ax_l.set_xlabel("step")
    ax_m.set_title(title)
    if resume is not None:
        for ax in (ax_m, ax_l):
            ax.axvline(resume.step, color="gray", linestyle=":", linewidth=1)
    fig.tight_layout()
    save_figure(fig, path)
