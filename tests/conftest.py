"""Shared session fixtures: a tiny dataset built from tests/fixtures/rust with the real builder, and tiny
checkpoints trained by the real trainer, each made once per test session.

The checkpoints use each recipe's tiny-scale architecture with a narrower shape (`MICRO_SHAPE`: dim 64, context
128, vocab = the fixture tokenizer's) so the whole suite stays fast on 2 CPU cores; `nanotrain run` has no
shape override, so the fixture drives `nanotrain.train.Trainer` (what `nanotrain run` runs) directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MICRO_SHAPE = dict(dim=64, n_heads=4, n_kv_heads=2, max_seq_len=128)
MICRO_TRAIN = dict(batch_size=2, seq_len=64, total_steps=4, warmup_steps=1, log_every=1, eval_every=0,
                   ckpt_every=0, dtype="fp32", seed=0)


def pytest_configure(config) -> None:
    """One intra-op thread: test models are tiny, and on a shared 2-core machine OpenMP worker threads spin
    waiting for cores (measured: a decode-sized attention call took 29 ms with 2 threads, 0.02 ms with 1)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixture_dataset(tmp_path_factory) -> Path:
    """A dataset folder built once per session from tests/fixtures/rust with `nanotrain data build` (vocab 512,
    parse filter on, 70/15/15 split by file so val and test hold several files: the corpus has no Cargo.toml and
    its folders are too few crates for a crate split)."""
    from nanotrain.cli import main

    out = tmp_path_factory.mktemp("dataset") / "fixture-rust"
    rc = main(["data", "build", "--src", str(FIXTURES / "rust"), "--out", str(out), "--vocab", "512",
               "--split", "70/15/15", "--split-by", "file", "--workers", "1"])
    assert rc == 0, "nanotrain data build failed on tests/fixtures/rust"
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory, fixture_dataset) -> Callable[[str], Path]:
    """`factory(recipe) -> Path` of the `final/` checkpoint of a few real training steps of `recipe` (tiny-scale
    architecture, `MICRO_SHAPE`, fp32, CPU), cached per session. The run folder (the checkpoint's parent) also
    holds metrics.jsonl. A recipe that resumes another (engram-v2) trains that one first and continues it."""
    from nanotrain.data.shards import Dataset
    from nanotrain.recipes import get_recipe
    from nanotrain.train import Trainer

    runs = tmp_path_factory.mktemp("runs")
    dataset = Dataset(fixture_dataset)
    made: dict[str, Path] = {}

    def factory(name: str) -> Path:
        if name in made:
            return made[name]
        recipe = get_recipe(name)
        model_cfg, train_cfg = recipe.build("tiny")
        model_cfg = dataclasses.replace(model_cfg, vocab_size=dataset.vocab_size, **MICRO_SHAPE)
        train_cfg = dataclasses.replace(train_cfg, **MICRO_TRAIN)
        parent = factory(recipe.resume_from) if recipe.resume_from else None
        if parent is not None:
            train_cfg.total_steps = 2 * MICRO_TRAIN["total_steps"]
        trainer = Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=dataset, run_dir=runs / name,
                          recipe=name, scale="tiny", device="cpu", progress=False, echo=lambda _msg: None)
        if parent is not None:
            trainer.resume(parent)
        result = trainer.fit()
        assert result.finished, f"tiny training of {name} stopped early ({result.reason})"
        made[name] = Path(result.checkpoint)
        return made[name]

    return factory


@pytest.fixture(scope="session")
def rustc():
    """The rustc `--validator rustc` would use (`nanoeval.rustc.find_rustc`); the test is skipped, with what was
    found, when there is none (.ci/run installs Debian's rustc-web)."""
    from nanoeval.rustc import find_rustc
    from nanotrain.errors import UserError

    try:
        return find_rustc()
    except UserError as e:
        pytest.skip(f"rustc tests need rustc >= 1.80: {e}")
