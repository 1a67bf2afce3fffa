"""Both command lines start, list their sub-commands and exit statuses, and share one grammar: user errors are one
line + exit 2, a check that finds a problem exits 1, a crash prints its traceback and exits 3."""

import argparse
import subprocess
import sys

import pytest

from nanotrain.cli import EXIT_CRASH, run_main
from nanotrain.errors import UserError


@pytest.mark.parametrize("prog", ["nanotrain", "nanoeval"])
def test_help_lists_commands_and_exit_statuses(prog):
    out = subprocess.run([sys.executable, "-m", prog, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "COMMAND" in out.stdout
    text = " ".join(out.stdout.split())
    assert "exit status: 0 ok; 1 the check found a problem" in text and "2 user error" in text and "3 crash" in text


def _parser(func) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("boom").set_defaults(func=func)
    return parser


def test_user_error_is_one_line_and_exit_2(capsys):
    def fail(args):
        raise UserError("file x.bin is missing")

    assert run_main(_parser(fail), ["boom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["demo: error: file x.bin is missing"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("boom"), PermissionError(13, "denied")])
def test_a_crash_prints_the_traceback_and_exits_3_never_1(capsys, exc):
    def crash(args):
        raise exc

    assert run_main(_parser(crash), ["boom"]) == EXIT_CRASH == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):"), err
    assert f"{type(exc).__name__}: " in err
    assert err.strip().splitlines()[-1].startswith("demo: internal error (exit 3): the traceback above is a bug")


def test_a_crash_in_the_real_cli_exits_3():
    """The nanoeval entry point itself: an exception no command expects ends with status 3 and its traceback."""
    code = ("import sys, nanoeval.commands.check_rust as c\n"
            "def run(args): raise ZeroDivisionError('unexpected')\n"
            "c.run = run\n"
            "from nanoeval.cli import main\n"
            "sys.exit(main(['check-rust', '-']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, input="")
    assert proc.returncode == 3, proc.stderr
    assert "ZeroDivisionError: unexpected" in proc.stderr and "nanoeval: internal error" in proc.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`nanoeval check-rust DIR | head -1`: the reader leaves early; no traceback, status 141 as from SIGPIPE."""
    for i in range(1000):  # ~250 KB of JSON lines: more than a pipe holds, so the writer meets the closed end
        (tmp_path / f"f{i:03d}.rs").write_text("fn main() {}\n")
    proc = subprocess.run(f"{sys.executable} -m nanoeval check-rust {tmp_path} | head -1; "
                          "echo \"status ${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and '"valid": true' in proc.stdout
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "status 141", proc.stderr
