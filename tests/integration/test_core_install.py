"""The core install: `pip install .` into a fresh venv (torch pinned as the Makefile pins it, so pip takes the CPU
wheel on disk) gives working `nanoeval` commands without gradio, evaluate, datasets or transformers, and the
commands that need an extra name it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "rust"


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)


@pytest.mark.slow
def test_core_install_runs_without_the_extras(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "*.egg-info", "build", "__pycache__", ".pytest_cache", ".whl"))
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv]).returncode == 0
    bin_ = venv / "bin"
    pip = _run([bin_ / "pip", "install", "-q", "--disable-pip-version-check", "torch==2.13.0", src])
    assert pip.returncode == 0, pip.stderr[-2000:]

    absent = _run([bin_ / "python", "-c", "import importlib.util as u; "
                   "print([m for m in ('gradio', 'gradio_client', 'evaluate', 'datasets', 'transformers') "
                   "if u.find_spec(m)])"])
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    imported = _run([bin_ / "python", "-c", "import sys, nanoeval, nanoeval.cli, nanotrain.cli; "
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'evaluate')))"])
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr[-2000:]

    valid = sorted(FIXTURES.glob("*.rs"))[0]
    check = _run([bin_ / "nanoeval", "check-rust", valid], cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert valid.name in check.stdout

    app = _run([bin_ / "nanolab-demo", "--runs", tmp_path], cwd=tmp_path)
    assert app.returncode == 2 and "pip install 'nanolab[app]'" in app.stderr, app.stderr[-2000:]
    export = _run([bin_ / "nanoeval", "export", "--ckpt", tmp_path, "--out", tmp_path / "hf"], cwd=tmp_path)
    assert export.returncode == 2 and "pip install 'nanolab[hf]'" in export.stderr, export.stderr[-2000:]
    assert len(app.stderr.strip().splitlines()) == 1 and len(export.stderr.strip().splitlines()) == 1
