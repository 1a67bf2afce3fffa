"""Faults during training and resuming: kill -9, half-written and damaged checkpoints, a full disk, NaN losses.

Every test drives the real `nanotrain run` (in-process, or as a subprocess when it must be killed) at the
regression micro shape on the fixture dataset, and checks what a user would find on disk afterwards.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanotrain import checkpoint as ckpt

from .conftest import REPO, step_dirs, train_rows


def truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / ckpt.MODEL_FILE)), load_file(str(b / ckpt.MODEL_FILE))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_9_mid_training_then_resume_auto_continues_from_last_complete_checkpoint(
        tmp_path, fixture_dataset, micro_run):
    runs = tmp_path / "runs"
    run = runs / "engram-v1"
    flags = ("--total-steps", 100000, "--ckpt-every", 1, "--log-every", 1, "--no-compile")  # one mode for all three
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.micro_nanotrain", "run", "engram-v1", "--scale", "tiny", "--data",
         str(fixture_dataset), "--out", str(runs), "--no-progress", *map(str, flags)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith("step_") and int(p.name[5:]) >= 4 for p in run.glob("step_*")):
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no step_4 checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    newest = max(int(p.name[5:]) for p in run.glob("step_*"))
    assert not (run / "final").exists()

    # What a crash (or a second crash mid-save) leaves: a temp folder holding a whole, newer checkpoint that was
    # never renamed into place, and a newer step folder whose weights were cut short.
    shutil.copytree(run / f"step_{newest}", run / f".tmp-step_{newest + 20}-1-1")
    shutil.copytree(run / f"step_{newest}", run / f"step_{newest + 10}")
    truncate(run / f"step_{newest + 10}" / ckpt.MODEL_FILE)

    code, out, err = micro_run("--resume", "auto", "--steps", 2)
    assert code == 0, err
    assert f"resumed from {run / f'step_{newest}'} at step {newest}" in out
    assert train_rows(run)[-1]["step"] == newest + 2
    resumed = run / f"step_{newest + 2}"
    assert ckpt.find_latest(run) == resumed

    # The resumed run is the run that was never killed: same weights at the same step.
    code, _, err = micro_run(*flags, "--steps", newest + 2, "--name", "straight")
    assert code == 0, err
    assert same_weights(resumed, runs / "straight" / f"step_{newest + 2}")


def test_auto_resume_skips_newest_checkpoint_with_truncated_weights(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 4)[0] == 0
    assert step_dirs(run) == ["step_2", "step_4"]
    truncate(run / "step_4" / ckpt.MODEL_FILE)
    code, out, err = micro_run("--resume", "auto", "--steps", 1)
    assert code == 0, err
    assert f"resumed from {run / 'step_2'} at step 2" in out


def test_metrics_log_holds_each_step_once_after_resuming_an_interrupted_run(tmp_path, micro_run):
    """A crash while step_4 is being saved leaves rows 1-4 in metrics.jsonl but only step_2 on disk; resuming
    from step_2 trains 3-4 again, and the log (which the app plots) must not hold those steps twice."""
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--log-every", 1, "--steps", 4)[0] == 0
    shutil.rmtree(run / "step_4")  # what kill -9 during the save of step_4 leaves
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3, 4]
    code, out, err = micro_run("--resume", "auto", "--steps", 3)
    assert code == 0, err
    assert f"resumed from {run / 'step_2'} at step 2" in out
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3, 4, 5]


def test_auto_resume_skips_newest_checkpoint_with_corrupt_trainer_state(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 4)[0] == 0
    truncate(run / "step_4" / ckpt.STATE_FILE)
    code, out, err = micro_run("--resume", "auto", "--steps", 1)
    assert code == 0, err
    assert f"resumed from {run / 'step_2'} at step 2" in out


def test_resume_from_a_named_checkpoint_with_truncated_weights_is_one_clear_line(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 2)[0] == 0
    truncate(run / "step_2" / ckpt.MODEL_FILE)
    code, out, err = micro_run("--resume", run / "step_2", "--name", "other")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"nanotrain: error: {run / 'step_2' / ckpt.MODEL_FILE}: truncated")


def _check_full_disk_outcome(run: Path, code: int, err: str) -> None:
    """After ENOSPC at the second save: a clear error, step_2 intact and loadable, nothing half-written."""
    assert step_dirs(run) == ["step_2"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]
    ckpt.read_config(run / "step_2")
    ckpt.load_trainer_state(run / "step_2")
    assert code != 0
    assert "No space left on device" in err and err.count("\n") == 1 and "Traceback" not in err


def test_disk_full_while_saving_keeps_previous_checkpoint_and_says_so(tmp_path, micro_run, monkeypatch):
    """ENOSPC injected into the weights writer at the second checkpoint (after half the bytes hit the disk)."""
    import safetensors.torch

    calls = []

    def full_disk_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_save_file)
    code, _, err = micro_run("--ckpt-every", 2, "--total-steps", 8)
    assert len(calls) == 2
    _check_full_disk_outcome(tmp_path / "runs" / "engram-v1", code, err)


@pytest.fixture
def small_tmpfs(tmpfs):
    """A real 1.2 MB tmpfs (room for one micro checkpoint, not two); skipped unless we may mount (root)."""
    return tmpfs("1200k")


def test_disk_full_on_a_real_tmpfs_keeps_previous_checkpoint_and_says_so(small_tmpfs, micro_run):
    code, _, err = micro_run("--ckpt-every", 2, "--total-steps", 8, out=small_tmpfs)
    _check_full_disk_outcome(small_tmpfs / "engram-v1", code, err)


def test_resume_from_checkpoint_with_nan_weights_is_refused_and_writes_nothing(tmp_path, micro_run):
    """Weights that are already non-finite cannot be fixed by the NaN guard's rollbacks (they roll back to the
    same weights): the resume must stop at once with one line naming the file, and write no checkpoint."""
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 2)[0] == 0
    weights = load_file(str(run / "step_2" / ckpt.MODEL_FILE))
    weights["norm_final.weight"][:] = float("nan")
    save_file(weights, str(run / "step_2" / ckpt.MODEL_FILE), metadata={"format": "pt"})
    code, out, err = micro_run("--resume", run / "step_2", "--name", "other")
    assert code == 2 and err.count("\n") == 1
    assert "sha256 mismatch" in err and str(run / "step_2" / ckpt.MODEL_FILE) in err
    code, out, err = micro_run("--resume", "auto", "--no-verify")  # past the manifest, the loader refuses NaN
    assert code == 2 and err.count("\n") == 1
    assert "non-finite" in err and str(run / "step_2") in err
    assert step_dirs(run) == ["step_2"]


def test_transient_nan_losses_are_skipped_rolled_back_and_the_lr_cut(tmp_path, fixture_dataset):
    """Three poisoned steps in a row: skipped, rollback to the last checkpoint, LR x0.5 for the cooldown."""
    import dataclasses
    import math

    from regression import spec

    from nanotrain.data.shards import Dataset
    from nanotrain.optim.schedule import wsd
    from nanotrain.recipes import get_recipe
    from nanotrain.train import NanGuard, Trainer

    with spec.micro_scale():
        model_cfg, train_cfg = get_recipe("engram-v1").build("tiny")
    train_cfg = dataclasses.replace(train_cfg, total_steps=16, ckpt_every=4, log_every=1)
    poisoned = {6, 7, 8}

    def hook(step, loss):
        if step in poisoned:
            poisoned.discard(step)
            return loss * float("nan")
        return loss

    messages: list[str] = []
    run = tmp_path / "run"
    trainer = Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=Dataset(fixture_dataset), run_dir=run,
                      recipe="engram-v1", scale="tiny", progress=False, echo=messages.append, loss_hook=hook,
                      nan_guard=NanGuard(patience=3, cooldown=4))
    result = trainer.fit()
    assert result.finished and trainer.guard.rollbacks == 1 and trainer.guard.skipped_total == 3
    assert any(m.startswith(f"NaN guard: rolled back to {run / 'step_4'} (step 4); LR x0.5 until step 8")
               for m in messages)
    last = {r["step"]: r for r in train_rows(run)}  # the rows after the rollback replace the poisoned ones
    assert sorted(last) == list(range(1, 17)) and not any(last[s]["skipped"] for s in range(5, 17))
    for s in range(5, 9):  # the cooldown (until step 8): half the scheduled LR
        assert last[s]["lr"] == pytest.approx(0.5 * train_cfg.lr * wsd(s - 1, train_cfg))
    assert last[9]["lr"] == pytest.approx(train_cfg.lr * wsd(8, train_cfg))
    assert all(math.isfinite(v.float().sum().item()) for v in load_file(str(run / "final" / ckpt.MODEL_FILE)).values())
