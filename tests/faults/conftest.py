"""Helpers of the fault tests: `nanotrain run` at the regression micro shape on the session's fixture dataset
(tests/fixtures/rust, vocab 512, built once by tests/conftest.py), in-process or as a killable subprocess."""

from __future__ import annotations

import json
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


def train_rows(run_dir: Path) -> list[dict]:
    """The train rows of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def step_dirs(run_dir: Path) -> list[str]:
    """Names of the visible checkpoint folders of a run, sorted."""
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
