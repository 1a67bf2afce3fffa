"""`nanotrain` command line. Each module in `nanotrain.commands` adds its own sub-commands."""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from nanotrain.errors import UserError


def build_parser(prog: str, description: str, package: str) -> argparse.ArgumentParser:
    """A parser whose sub-commands come from every module of `package` that defines `register(sub)`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    pkg = importlib.import_module(package)
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package}.{mod.name}").register(sub)
    return parser


def run_main(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, dispatch to `args.func`, and turn user errors and a full disk (wherever it is met) into one line on
    stderr and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"{parser.prog}: error: {where}cannot write ({e.strerror}); free some space and run it again",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "nanotrain",
        "Train small Rust code models: build data, list recipes, run training, plan sessions.",
        "nanotrain.commands",
    )
    return run_main(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
