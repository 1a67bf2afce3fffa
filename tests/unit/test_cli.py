"""Both command lines start, list their sub-commands, and turn user errors into one line + exit 2."""

import subprocess
import sys

import pytest

from nanotrain.cli import run_main
from nanotrain.errors import UserError


@pytest.mark.parametrize("prog", ["nanotrain", "nanoeval"])
def test_help_lists_commands(prog):
    out = subprocess.run([sys.executable, "-m", prog, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "COMMAND" in out.stdout


def test_user_error_is_one_line_and_exit_2(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="demo")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("boom")

    def fail(args):
        raise UserError("file x.bin is missing")

    p.set_defaults(func=fail)
    assert run_main(parser, ["boom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["demo: error: file x.bin is missing"]
