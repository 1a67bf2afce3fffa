"""`nanotrain` command line. Each module in `nanotrain.commands` adds its own sub-commands."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import traceback

from nanotrain.errors import UserError

# Exit statuses shared by every nanotrain and nanoeval command.
EXIT_OK = 0
EXIT_FOUND = 1  # the command ran and its check found a problem (check-rust: an invalid file; causality: a leak)
EXIT_USAGE = 2  # user error: a bad flag, a missing or corrupt file, a device that is not there, a full disk
EXIT_CRASH = 3  # an unexpected exception (a bug): the traceback is printed

EXIT_CODES_HELP = """\
exit status: 0 ok; 1 the check found a problem (check-rust: an invalid file, causality: a leak); 2 user error
(one line on stderr naming it); 3 crash (unexpected exception, traceback printed); 130/143 interrupted."""

DEVICES = ("auto", "cpu", "cuda")


def add_device_arg(p: argparse.ArgumentParser, default: str) -> None:
    """The `--device` flag every command that runs a model takes; `nanotrain.dist.resolve_device` checks that the
    device is there."""
    p.add_argument("--device", choices=DEVICES, default=default,
                   help=f"auto (cuda when a GPU is visible), cpu or cuda (default: {default}); "
                        "CUDA_VISIBLE_DEVICES picks the GPU")


def build_parser(prog: str, description: str, package: str) -> argparse.ArgumentParser:
    """A parser whose sub-commands come from every module of `package` that defines `register(sub)`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    pkg = importlib.import_module(package)
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package}.{mod.name}").register(sub)
    return parser


def run_main(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, dispatch to `args.func`, and map the outcome to the exit statuses of `EXIT_CODES_HELP`: user errors
    and a full disk (wherever it is met) are one line on stderr and 2; any other exception prints its traceback
    and returns 3."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f"{e.filename}: " if e.filename else ""
            print(f"{parser.prog}: error: {where}cannot write ({e.strerror}); free some space and run it again",
                  file=sys.stderr)
            return EXIT_USAGE
        if e.errno == errno.EPIPE:  # the reader of stdout went away (`| head`): stop quietly, as a shell tool does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + 13
        return _crash(parser.prog)
    except Exception:
        return _crash(parser.prog)


def _crash(prog: str) -> int:
    """Print the traceback of the exception being handled and a line saying it is a bug; the crash status."""
    traceback.print_exc()
    print(f"{prog}: internal error (exit {EXIT_CRASH}): the traceback above is a bug, not a mistake in the "
          "command line", file=sys.stderr)
    return EXIT_CRASH


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "nanotrain",
        "Train small Rust code models: build data, list recipes, run training, plan sessions.",
        "nanotrain.commands",
    )
    return run_main(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
