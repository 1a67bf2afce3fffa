"""Session fixtures of the regression tests: the dataset of the committed regression corpus, and a factory that
trains and scores one recipe (cached, so engram-v2 reuses engram-v1's run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from . import spec


@pytest.fixture(scope="session")
def regression_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nanotrain data build` of tests/fixtures/rust with the regression build flags."""
    with spec.one_thread():
        return spec.build_dataset(tmp_path_factory.mktemp("regression") / "dataset")


@pytest.fixture(scope="session")
def measure(tmp_path_factory: pytest.TempPathFactory, regression_dataset: Path) -> Callable[[str], dict]:
    """`measure(recipe) -> metrics`: train (`nanotrain run`) and score (`nanoeval score`) once per session."""
    work = tmp_path_factory.mktemp("regression_runs")
    done: dict[str, dict] = {}

    def run(recipe: str) -> dict:
        if recipe not in done:
            from nanotrain.recipes import get_recipe

            parent = get_recipe(recipe).resume_from
            if parent is not None:
                run(parent)
            with spec.one_thread():
                ckpt = spec.train(recipe, regression_dataset, work / "runs")
                report = spec.score(recipe, ckpt, regression_dataset, work / "scores" / f"{recipe}.json")
            done[recipe] = spec.metrics_of(report, work / "runs" / recipe)
        return done[recipe]

    return run
