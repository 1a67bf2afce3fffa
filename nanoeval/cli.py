"""`nanoeval` command line. Each module in `nanoeval.commands` adds its own sub-commands."""

from __future__ import annotations

import sys

from nanotrain.cli import build_parser, run_main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "nanoeval",
        "Evaluate nanotrain checkpoints: generate, score Rust with tree-sitter, held-out loss, compare runs.",
        "nanoeval.commands",
    )
    return run_main(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
