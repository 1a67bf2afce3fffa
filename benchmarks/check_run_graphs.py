"""Whole-run check of `nanotrain run --cuda-graphs`: the same short run with and without CUDA graphs, then a resume.

`bench_train.py --compile-mode reduce-overhead` times the bare step. This script runs the real thing, the
`nanotrain run` command a user types: dataset, schedule, logging, evaluation and checkpoints. It runs one recipe
from the same seed once per variant (default: `compiled` = `--compile --no-cuda-graphs`, `graphs` =
`--cuda-graphs`). Then it resumes the last variant's run from its checkpoint for a few more steps. It compares:

- the logged training losses, interval by interval (same seed and data order, so they should agree to within bf16
  noise; the check fails when one differs by more than --tol, relative),
- the validation loss at each evaluation,
- the steady step time: the median of the logged `step_ms` after the first interval, which holds compilation.

It prints a table and writes JSON (default benchmarks/results/check_run_graphs_<device>.json). The exit status is
non-zero when a run fails or the losses disagree. On a CPU the variants can be any `nanotrain run` flags, which
is how its test runs it: `--variant a=--no-compile --variant b=--no-compile`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, format_table, run_cli, write_json  # noqa: E402
from nanotrain.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ["compiled=--compile --no-cuda-graphs", "graphs=--cuda-graphs"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name.isidentifier():
        raise UserError(f"--variant {text!r}: expected NAME=FLAGS, e.g. graphs=--cuda-graphs")
    return name, shlex.split(flags)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, val rows) of a run's metrics.jsonl (`nanotrain.files.read_metrics`); UserError if missing."""
    from nanotrain.files import read_metrics as read_log

    if not path.is_file():
        raise UserError(f"{path}: missing (the run wrote no metrics)")
    return read_log(path)


def steady_step_ms(train: list[dict[str, Any]]) -> float | None:
    """Median logged step time after the first log interval (which includes compiling)."""
    later = [r["step_ms"] for r in train[1:] if r.get("step_ms") is not None]
    return round(statistics.median(later), 2) if later else None


def run_nanotrain(args: list[str], log: Path) -> float:
    """Run `python -m nanotrain run ...`, output to `log`; UserError naming the log on failure. Returns seconds."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "nanotrain", "run", *args]
    print("$ " + shlex.join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise UserError(f"`nanotrain run` failed (exit {rc}); last lines of {log}:\n{tail}")
    return seconds


def compare(reference: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> float | None:
    """Largest relative difference of `key` over the steps both lists hold (None if they share none)."""
    ref = {r["step"]: r[key] for r in reference if r.get(key) is not None}
    diffs = [abs(r[key] - ref[r["step"]]) / max(abs(ref[r["step"]]), 1e-12)
             for r in other if r.get(key) is not None and r["step"] in ref]
    return max(diffs) if diffs else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="check_run_graphs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="engram-v1", help="recipe to train (default engram-v1)")
    ap.add_argument("--scale", default="full", choices=["full", "small", "tiny"], help="default full")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "datasets" / "rust-default",
                    help="dataset folder (default data/datasets/rust-default)")
    ap.add_argument("--steps", type=int, default=120, help="steps per variant (default 120)")
    ap.add_argument("--total-steps", type=int, default=10000, help="schedule length (default 10000, the recipes')")
    ap.add_argument("--log-every", type=int, default=10, help="steps per logged interval (default 10)")
    ap.add_argument("--resume-steps", type=int, default=20,
                    help="steps of the resumed run, from the last variant's final checkpoint (0: no resume)")
    ap.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                    help="a variant: name and extra `nanotrain run` flags; repeatable; the first is the one the "
                         f"others are compared with (default: {' '.join(repr(v) for v in DEFAULT_VARIANTS)})")
    ap.add_argument("--run-flags", default="", metavar="FLAGS",
                    help="extra `nanotrain run` flags for every variant, e.g. '--batch-size 4 --seq-len 128'")
    ap.add_argument("--tol", type=float, default=0.02,
                    help="largest relative train/val loss difference to the first variant that passes "
                         "(default 0.02)")
    ap.add_argument("--work", type=Path, default=None, help="runs folder (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("steps", "total_steps", "log_every"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be positive")
    if args.resume_steps < 0:
        raise UserError(f"--resume-steps {args.resume_steps}: must not be negative")
    if not (args.data / "train.bin").is_file():
        raise UserError(f"--data {args.data}: no train.bin (build one with `nanotrain data build`)")
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    if len({n for n, _ in variants}) != len(variants):
        raise UserError("--variant: names must differ")

    with tempfile.TemporaryDirectory(prefix="check_run_graphs_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        common = ["--scale", args.scale, "--data", str(args.data), "--out", str(work),
                  "--total-steps", str(args.total_steps), "--log-every", str(args.log_every),
                  "--eval-every", str(args.steps), "--ckpt-every", "0", "--no-progress",
                  *shlex.split(args.run_flags)]
        results = []
        for name, flags in variants:
            seconds = run_nanotrain([args.recipe, "--name", name, "--steps", str(args.steps), *common, *flags],
                                    work / f"{name}.log")
            train, evals = read_metrics(work / name / "metrics.jsonl")
            results.append({"variant": name, "flags": shlex.join(flags), "wall_s": round(seconds, 1),
                             "steps": train[-1]["step"] if train else 0, "step_ms": steady_step_ms(train),
                             "last_loss": train[-1]["loss"] if train else None,
                             "val_ce": evals[-1]["val_ce"] if evals else None, "train": train, "evals": evals})
        if args.resume_steps:
            name, flags = variants[-1]
            seconds = run_nanotrain([args.recipe, "--name", name, "--resume", "auto",
                                     "--steps", str(args.resume_steps), *common, *flags],
                                    work / f"{name}_resume.log")
            train, evals = read_metrics(work / name / "metrics.jsonl")
            resumed = [r for r in train if r["step"] > args.steps]
            results.append({"variant": f"{name}+resume", "flags": shlex.join(["--resume", "auto", *flags]),
                            "wall_s": round(seconds, 1), "steps": train[-1]["step"] if train else 0,
                            "step_ms": steady_step_ms(resumed), "last_loss": train[-1]["loss"] if train else None,
                            "val_ce": evals[-1]["val_ce"] if evals else None})

    base = results[0]
    failures = []
    for r in results[1:len(variants)]:
        r["max_rel_diff_loss"] = compare(base["train"], r["train"], "loss")
        r["max_rel_diff_val_ce"] = compare(base["evals"], r["evals"], "val_ce")
        r["step_ms_ratio"] = (round(base["step_ms"] / r["step_ms"], 3)
                              if base["step_ms"] and r["step_ms"] else None)
        for key in ("max_rel_diff_loss", "max_rel_diff_val_ce"):
            if r[key] is None or r[key] > args.tol:
                failures.append(f"{r['variant']}: {key} {r[key]} (tolerance {args.tol})")
    if args.resume_steps and results[-1]["steps"] != args.steps + args.resume_steps:
        failures.append(f"resume: ended at step {results[-1]['steps']}, expected {args.steps + args.resume_steps}")

    cols = [("variant", "variant"), ("wall_s", "wall s"), ("steps", "steps"), ("step_ms", "step ms (steady)"),
            ("step_ms_ratio", "speed vs first"), ("last_loss", "last loss"), ("val_ce", "val CE"),
            ("max_rel_diff_loss", "max rel diff loss"), ("max_rel_diff_val_ce", "max rel diff val")]
    print(format_table(results, cols))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = args.out or RESULTS_DIR / f"check_run_graphs_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    write_json(out, {"schema": "nanolab.check_run_graphs/1", "device": device, "torch": torch.__version__,
                     "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "results": results, "failures": failures})
    print(f"wrote {out}")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli("check_run_graphs", main))
