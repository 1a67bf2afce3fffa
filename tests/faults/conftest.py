"""Helpers of the fault tests: `nanotrain run` at the regression micro shape on the session's fixture dataset
(tests/fixtures/rust, vocab 512, built once by tests/conftest.py), in-process or as a subprocess to signal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from regression import spec

REPO = spec.REPO


@pytest.fixture(autouse=True)
def one_thread():
    """Faults are about files and processes, not speed: one thread keeps runs deterministic and polite."""
    with spec.one_thread():
        yield


@pytest.fixture
def micro_run(fixture_dataset: Path, tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """`micro_run(*flags) -> (code, stdout, stderr)` of `nanotrain run engram-v1` into tmp_path/runs."""

    def run(*flags, recipe: str = "engram-v1", out: Path | None = None) -> tuple[int, str, str]:
        with spec.micro_scale():
            return spec.run_cli("nanotrain", "run", recipe, "--scale", "tiny", "--data", fixture_dataset,
                                "--out", out or tmp_path / "runs", "--no-progress", *flags)

    return run


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size) -> Path` of a real tmpfs of that size (e.g. "256k") under tmp_path, unmounted afterwards;
    skips the test unless we may mount (root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: a failed test may still hold a file open


def train_rows(run_dir: Path) -> list[dict]:
    """The train rows of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def step_dirs(run_dir: Path) -> list[str]:
    """Names of the visible checkpoint folders of a run, sorted."""
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def spawn_run(dataset: Path, runs: Path, *flags) -> subprocess.Popen:
    """`nanotrain run engram-v1` at the micro shape as a subprocess (so it can be signalled or killed); its
    stdout and stderr are pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.micro_nanotrain", "run", "engram-v1", "--scale", "tiny", "--data",
         str(dataset), "--out", str(runs), "--no-progress", *map(str, flags)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll until `predicate()` holds; fail with the process's stderr if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            tail = proc.stderr.read()[-2000:]
            raise AssertionError(f"training exited early ({proc.returncode}) before {what}: {tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)
