"""`nanoeval compare`: runs side by side (score reports or checkpoint folders), with intervals and pairwise tests."""

from __future__ import annotations

from pathlib import Path

from nanoeval.load import add_verify_flag


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="side-by-side table of runs from score reports or checkpoint folders",
        description="Print a markdown table comparing runs: params, steps, train loss, val CE, bits/byte, valid "
                    "rate (tree-sitter's or rustc's), bracket balance, distinct-3 (each with its 95% interval), "
                    "causal and inference mode; each run's step and sampling settings (with a warning when the "
                    "reports differ in them); and every pair's differences with a paired bootstrap 95% interval, "
                    "naming a winner only when the interval excludes zero. A checkpoint folder uses its "
                    "score.json when present (run `nanoeval score` first for generation metrics), else only its "
                    "training metrics.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="score report JSON files, checkpoint folders or run folders")
    p.add_argument("--md", type=Path, default=None, help="also write the table to this markdown file")
    add_verify_flag(p, "read checkpoint folders (their config.json and metrics.json)")
    p.add_argument("--validator", choices=("tree-sitter", "rustc", "both"), default="tree-sitter",
                   help="whose valid rate to show: tree-sitter (default), rustc or both (two columns); a report "
                        "scored without that validator shows '-' (score with --validator rustc/both)")
    p.add_argument("--rank", action="store_true",
                   help="order the runs by that valid rate (tree-sitter's with both), highest first")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nanoeval.report import compare_row, compare_table, write_text

    table = compare_table([compare_row(p, verify=args.verify) for p in args.paths], args.validator, args.rank)
    print(table, end="")
    if args.md is not None:
        write_text(args.md, table)
        print(f"written: {args.md}")
    return 0
