"""`nanotrain session FILE`: run a session file's runs over the GPUs (or the CPU), resumable, then score them."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  nanotrain session sessions/seed.toml --gpus 0,1 --dry-run   # the original two-round plan, on any machine
  nanotrain session sessions/seed.toml                        # all visible GPUs (or the CPU, at tiny scale)
  nanotrain session sessions/seed.toml --scale tiny           # the same four runs, small enough for a CPU
  nanoeval report --session runs/seed                         # the session report (markdown)

A session file lists [[run]] tables: name, recipe, optional depends_on = [...], resume_from = "run" (continue
that run's final checkpoint), gpu = N (preference), and overrides of `nanotrain run` flags (steps, total_steps,
batch_size, seq_len, seed, log_every, eval_every, ckpt_every, rewarm_steps, threads, time_budget, dtype,
resume_lr). An optional [score] table sets the `nanoeval score` settings (prompts, samples_per_prompt,
max_new_tokens, heldout_tokens, temperature, seed, enabled).

Each device runs one `python -m nanotrain run` subprocess at a time (own CUDA_VISIBLE_DEVICES), logging to
RUNS/SESSION/RUN/train.log; RUNS/SESSION/session.json keeps the state. Run the command again to continue: runs with
final/ are skipped, interrupted ones resume from their newest checkpoint. Ctrl-C checkpoints every running run.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "session", help="run a session file: several runs scheduled over GPUs, resumable, then scored",
        description="Schedule the runs of a session file (TOML) onto the available GPUs (or the CPU) honouring "
                    "their dependencies, train each with `nanotrain run`, then score each final checkpoint with "
                    "`nanoeval score`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="session file, e.g. sessions/seed.toml")
    p.add_argument("--gpus", metavar="LIST",
                   help="GPU indices to use, e.g. 0,1, or 'cpu' (default: every visible GPU, else the CPU)")
    p.add_argument("--scale", choices=["auto", "full", "small", "tiny"], default="auto",
                   help="size of every run: auto = full on GPUs, tiny on the CPU (default: auto)")
    p.add_argument("--runs", type=Path, help="runs folder; the session goes to RUNS/<session name> "
                                             "(default: $NANOLAB_RUNS or ./runs)")
    p.add_argument("--data", type=Path, help="dataset folder (default: the default dataset, built on first use)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (rounds, devices, who waits for whom, commands) and exit; with --gpus it "
                        "works on a machine without those GPUs (simulated)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per run for runs whose table sets none (1 is faster when other jobs share "
                        "the cores)")
    p.add_argument("--no-score", action="store_true", help="train only; do not run `nanoeval score` afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (event lines only)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from nanotrain.errors import UserError
    from nanotrain.paths import default_runs_dir
    from nanotrain.session import (
        Runner,
        build_plan,
        check_resumable_scale,
        format_plan,
        load_session,
        resolve_scale,
        resolve_slots,
    )

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    session = load_session(args.file, default_threads=args.threads)
    slots, simulated = resolve_slots(args.gpus, args.dry_run)
    plan = build_plan(session, slots, resolve_scale(args.scale, slots), simulated=simulated)
    runs = args.runs if args.runs is not None else default_runs_dir()
    if args.data is not None and not (args.data / "meta.json").is_file():
        raise UserError(f"--data {args.data}: not a dataset folder (no meta.json)")
    if args.dry_run:
        print(format_plan(plan, runs, args.data))
        return 0
    data = args.data
    if data is None:
        from nanotrain.data.default import ensure_default_dataset

        data = ensure_default_dataset(scale=plan.scale)
    check_resumable_scale(plan, runs)
    print(format_plan(plan, runs, data))
    result = Runner(plan, runs, data, progress=not args.no_progress, score=not args.no_score).execute()
    folder = runs / session.name
    if result.interrupted:
        print(f"session {session.name}: interrupted; continue with: nanotrain session {args.file} "
              + " ".join(a for a in _flags(args)))
        return 130
    summary = ", ".join(f"{n} {s}" for n, s in result.status.items())
    print(f"session {session.name}: {summary}; state {folder / 'session.json'}")
    if not result.ok:
        print(f"re-run `nanotrain session {args.file} {' '.join(_flags(args))}` to continue; logs: "
              f"{folder}/<run>/train.log")
        return 1
    print(f"report: nanoeval report --session {folder}")
    return 0


def _flags(args: argparse.Namespace) -> list[str]:
    """The flags of this invocation, to repeat in a 'continue with' hint."""
    out = []
    for flag in ("gpus", "runs", "data", "threads"):
        if getattr(args, flag) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    if args.scale != "auto":
        out += ["--scale", args.scale]
    return out
