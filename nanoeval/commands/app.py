"""`nanoeval app`: serve the Gradio side-by-side generation demo (apps/demo.py) for the checkpoints in a runs folder."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

from nanoeval.load import add_verify_flag
from nanoeval.rustc import add_validator_args
from nanotrain.errors import UserError
from nanotrain.paths import default_runs_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="side-by-side generation demo in the browser (Gradio)",
        description=(
            "Serve a web page that streams completions from 2-4 checkpoints side by side, scores each with "
            "tree-sitter, and shows the runs' score reports and training curves. Only checkpoints under --runs "
            "(<run>/final, <run>/step_N) can be opened. Listens on 127.0.0.1 unless --host says otherwise; "
            "Gradio analytics are off."
        ),
    )
    p.add_argument("--runs", type=Path, default=None,
                   help="runs folder to serve checkpoints from (default: $NANOLAB_RUNS or ./runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; use 0.0.0.0 to expose it on the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="generations served at once; more requests wait in the queue (default 2)")
    p.add_argument("--max-queue", type=int, default=32, help="requests allowed to wait in the queue (default 32)")
    p.add_argument("--cache-size", type=int, default=4,
                   help="loaded checkpoints kept in memory, least recently used dropped first (default 4)")
    add_verify_flag(p)
    add_validator_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = args.runs if args.runs is not None else default_runs_dir()
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    for flag, value in (("--concurrency", args.concurrency), ("--max-queue", args.max_queue),
                        ("--cache-size", args.cache_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if not runs.is_dir():
        raise UserError(f"--runs {runs}: no such folder (train a run first: nanotrain run RECIPE)")

    from nanoeval.rustc import find_rustc

    rustc = find_rustc(args.rustc) if args.validator != "tree-sitter" else None
    demo = _import_demo()
    found = demo.discover_checkpoints(runs)
    print(f"nanoeval app: {len(found)} checkpoint(s) under {runs}"
          + ("" if found else " (none yet: the page can rescan once a run writes one)"))
    demo.launch(runs, host=args.host, port=args.port, cache_size=args.cache_size,
                concurrency=args.concurrency, max_queue=args.max_queue, block=True, verify=args.verify,
                validator=args.validator, rustc=rustc)
    return 0


def _import_demo() -> ModuleType:
    """`apps.demo` (installed with the package; imported lazily so `--help` stays fast and the core install, without
    gradio, runs every other command)."""
    from nanotrain.extras import require

    require("gradio", "nanoeval app")
    return importlib.import_module("apps.demo")
