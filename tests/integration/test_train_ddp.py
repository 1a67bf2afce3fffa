"""DDP on CPU (gloo): 2 processes with per-rank batch B train exactly like 1 process with batch 2B, and a run
checkpointed at one world size resumes at another."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from test_train_corpus import fixture_dataset, one_thread  # noqa: F401  (fixtures)
from test_train_loop import model_cfg, train_cfg

from nanotrain import checkpoint as ckpt
from nanotrain.data.shards import Dataset
from nanotrain.dist import init_distributed, shutdown
from nanotrain.train import Trainer

STEPS = 20
# Two spawned processes import torch and train under gloo: ~40 s on the shared 2-core machine.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, ds_dir: str, run_dir: str, max_steps: int | None,
            resume: str | None, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    info = init_distributed("cpu")
    try:
        trainer = Trainer(model_cfg=model_cfg(), train_cfg=train_cfg(total_steps=STEPS, batch_size=8),
                          dataset=Dataset(ds_dir), run_dir=run_dir, recipe="test", dist=info, progress=False,
                          echo=lambda m: None)
        if resume:
            trainer.resume(resume)
        res = trainer.fit(max_steps=max_steps)
        if info.is_main:
            Path(out_file).write_text(json.dumps([r["loss"] for r in res.history]))
    finally:
        shutdown(info)


def run_ddp(world: int, ds_dir: Path, run_dir: Path, max_steps: int | None = None, resume: Path | None = None
            ) -> list[float]:
    out = run_dir.parent / f"{run_dir.name}-losses-{world}.json"
    mp.start_processes(_worker, args=(world, _free_port(), str(ds_dir), str(run_dir), max_steps,
                                      str(resume) if resume else None, str(out)),
                       nprocs=world, start_method="spawn")
    return json.loads(out.read_text())


def run_single(ds_dir: Path, run_dir: Path, max_steps: int | None = None, resume: Path | None = None) -> list[float]:
    trainer = Trainer(model_cfg=model_cfg(), train_cfg=train_cfg(total_steps=STEPS, batch_size=8),
                      dataset=Dataset(ds_dir), run_dir=run_dir, recipe="test", progress=False, echo=lambda m: None)
    if resume:
        trainer.resume(resume)
    return [r["loss"] for r in trainer.fit(max_steps=max_steps).history]


def test_two_processes_match_one_with_the_same_global_batch(fixture_dataset, tmp_path):
    single = run_single(fixture_dataset, tmp_path / "single")
    ddp = run_ddp(2, fixture_dataset, tmp_path / "ddp")
    assert len(single) == len(ddp) == STEPS
    assert ddp == pytest.approx(single, abs=1e-4)
    assert single[-1] < single[0]
    assert ckpt.load_checkpoint(tmp_path / "ddp" / "final").step == STEPS  # rank 0 wrote the checkpoints
    assert not list((tmp_path / "ddp").glob(".tmp-*"))


def test_resume_at_another_world_size(fixture_dataset, tmp_path):
    single = run_single(fixture_dataset, tmp_path / "single")
    first = run_ddp(2, fixture_dataset, tmp_path / "mixed", max_steps=STEPS // 2)
    step = tmp_path / "mixed" / f"step_{STEPS // 2}"
    assert ckpt.find_latest(tmp_path / "mixed") == step
    assert ckpt.load_trainer_state(step)["world_size"] == 2
    second = run_single(fixture_dataset, tmp_path / "mixed", resume=step)
    assert first + second == pytest.approx(single, abs=1e-4)
