"""One writer per run folder, and what a stopped run leaves behind: a second `nanotrain run` on a locked folder,
SIGTERM and a second signal during a save, stale temp folders, metrics rows of a dead attempt, a full disk inside
the weights writer, the resume hint, and flags refused before any training (run name, time budget, batch size)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from regression import spec

from nanotrain import checkpoint as ckpt

from .conftest import spawn_run, step_dirs, train_rows, wait_for

LONG = ("--total-steps", 100000, "--no-compile")  # a run that only stops when told to


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("nanotrain: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_second_run_on_the_same_folder_exits_2_naming_the_first_pid(tmp_path, fixture_dataset, micro_run):
    runs = tmp_path / "runs"
    run = runs / "engram-v1"
    proc = spawn_run(fixture_dataset, runs, *LONG, "--ckpt-every", 1, "--log-every", 1)
    try:
        wait_for(lambda: any(run.glob("step_*")), proc, "a first checkpoint")
        code, out, err = micro_run("--resume", "auto", "--steps", 1)
        one_line(code, err, str(run), f"another nanotrain run (PID {proc.pid}) is writing to this run folder")
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    code, out, err = micro_run("--resume", "auto", "--steps", 1)  # the kernel dropped the dead holder's lock
    assert code == 0, err


def test_sigterm_checkpoints_and_exits_143(tmp_path, fixture_dataset):
    runs = tmp_path / "runs"
    run = runs / "engram-v1"
    proc = spawn_run(fixture_dataset, runs, *LONG, "--ckpt-every", 0, "--log-every", 1)
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and len(train_rows(run)) >= 2, proc, "two logged steps")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping after this step and saving a checkpoint" in out
    latest = ckpt.find_latest(run)
    assert latest is not None and latest.name == f"step_{train_rows(run)[-1]['step']}"
    assert f"(SIGTERM): {latest}" in out and "continue with: nanotrain run engram-v1 --resume auto" in out
    assert "Traceback" not in err


def test_a_second_signal_during_a_save_is_ignored_until_the_save_is_done(tmp_path, fixture_dataset, monkeypatch):
    """Ctrl-C at step 2, then Ctrl-C again while the checkpoint is being written: the files are finished, the
    run stops as asked once, and the checkpoint is whole."""
    from nanotrain.data.shards import Dataset
    from nanotrain.recipes import get_recipe
    from nanotrain.train import Trainer

    with spec.micro_scale():
        model_cfg, train_cfg = get_recipe("engram-v1").build("tiny")
    train_cfg = dataclasses.replace(train_cfg, ckpt_every=0, log_every=1)

    def hook(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    real_save = ckpt.save_checkpoint

    def save_while_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the trainer is inside its save
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_while_signalled)
    messages: list[str] = []
    run = tmp_path / "run"
    trainer = Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=Dataset(fixture_dataset), run_dir=run,
                      recipe="engram-v1", scale="tiny", progress=False, echo=messages.append, loss_hook=hook)
    result = trainer.fit()
    assert result.reason == "interrupted" and result.step == 2 and result.stop_signal == signal.SIGINT
    assert "Ctrl-C: a checkpoint is being written; it finishes first" in messages
    assert ckpt.find_latest(run) == run / "step_2"
    ckpt.verify_manifest(run / "step_2")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stale_temp_folders_of_the_run_are_removed_under_the_lock(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 2)[0] == 0
    stale = [run / ".tmp-step_4-999-1", run / ".tmp-old-step_2-999-2"]  # what kill -9 during saves leaves
    for folder in stale:
        shutil.copytree(run / "step_2", folder)
    code, out, err = micro_run("--resume", "auto", "--steps", 1)
    assert code == 0, err
    assert "removed 2 unfinished checkpoint folder(s) of a stopped run" in out
    assert not any(p.exists() for p in stale)


def test_dataset_build_removes_temp_folders_of_dead_builds(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its PID no longer runs: what a killed build leaves
    dead, alive = tmp_path / f".ds.tmp-{proc.pid}", tmp_path / ".ds.tmp-1"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"\0" * 1000)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("sorting.rs", "lib.rs", "ffi.rs"):
        shutil.copy(spec.CORPUS / name, src / name)
    code, _, err = spec.run_cli("nanotrain", "data", "build", "--src", src, "--out", tmp_path / "ds",
                                "--vocab", 300, "--split", "100/0/0", "--workers", 1)
    assert code == 0, err
    assert not dead.exists()
    assert alive.exists()  # PID 1 runs: a build in progress is never touched


def test_fresh_start_drops_the_metrics_rows_of_an_attempt_that_saved_no_checkpoint(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--log-every", 1, "--steps", 2, "--ckpt-every", 0)[0] == 0
    shutil.rmtree(run / "step_2")  # what kill -9 during the first save leaves: rows, no checkpoint
    assert [r["step"] for r in train_rows(run)] == [1, 2]
    code, out, err = micro_run("--log-every", 1, "--steps", 1, "--ckpt-every", 0)
    assert code == 0, err
    assert "fresh start: removed" in out
    assert [r["step"] for r in train_rows(run)] == [1]


def test_the_resume_hint_repeats_every_flag_needed_to_continue(tmp_path, fixture_dataset, micro_run):
    code, out, err = micro_run("--steps", 1, "--name", "hinted run")
    assert code == 0, err
    hint = next(line for line in out.splitlines() if "continue with: " in line).split("continue with: ")[1]
    argv = shlex.split(hint)
    assert argv[:5] == ["nanotrain", "run", "engram-v1", "--resume", "auto"]
    flags = dict(zip(argv[5::2], argv[6::2]))
    assert flags == {"--scale": "tiny", "--data": str(fixture_dataset), "--out": str(tmp_path / "runs"),
                     "--name": "hinted run"}
    with spec.micro_scale():  # following the hint continues the run (nothing fetched, nothing restarted)
        code, out, err = spec.run_cli(*argv, "--steps", 1, "--no-progress")
    assert code == 0, err
    assert f"resumed from {tmp_path / 'runs' / 'hinted run' / 'step_1'} at step 1" in out


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "."])
def test_run_name_with_a_path_separator_is_refused(tmp_path, micro_run, name):
    code, out, err = micro_run("--name", name, "--steps", 1)
    one_line(code, err, f"--name {name!r}: must be a plain folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs" / "a").exists()
    assert not (tmp_path / "runs" / "step_1").exists() and not (tmp_path / "step_1").exists()


@pytest.mark.parametrize("budget", ["nan", "inf"])
def test_non_finite_time_budget_is_refused(tmp_path, micro_run, budget):
    code, out, err = micro_run("--time-budget", budget, "--steps", 1)
    one_line(code, err, f"--time-budget {budget}: must be a finite number of minutes")
    assert not (tmp_path / "runs" / "engram-v1").exists()


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_the_estimate(tmp_path, micro_run):
    code, out, err = micro_run("--batch-size", 10**7)
    one_line(code, err, "--batch-size 10000000: one step needs at least", "GiB", "lower --batch-size")
    assert not (tmp_path / "runs" / "engram-v1").exists()


def _assert_clean_disk_full(run: Path, code: int, err: str) -> None:
    one_line(code, err, "No space left on device", f"{run / 'step_2'}: cannot write checkpoint")
    assert step_dirs(run) == []
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]


def test_disk_full_inside_the_safetensors_writer_is_one_line(tmpfs, micro_run):
    """A real tmpfs smaller than the weights: the first checkpoint fails inside safetensors' own writer."""
    out = tmpfs("256k")
    code, _, err = micro_run("--steps", 2, "--ckpt-every", 0, out=out)
    _assert_clean_disk_full(out / "engram-v1", code, err)


def test_disk_full_error_of_the_safetensors_writer_is_one_line(tmp_path, micro_run, monkeypatch):
    """The error type and text safetensors' writer raises on a full disk, without needing a mount."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, _, err = micro_run("--steps", 2, "--ckpt-every", 0)
    _assert_clean_disk_full(tmp_path / "runs" / "engram-v1", code, err)


def test_disk_full_while_building_a_dataset_is_one_line(tmpfs):
    out = tmpfs("64k")
    code, _, err = spec.run_cli("nanotrain", "data", "build", "--src", spec.CORPUS, "--out", out / "ds", "--vocab",
                                300, "--split", "100/0/0", "--workers", 1)
    assert code == 2 and err.count("nanotrain: error: ") == 1 and "Traceback" not in err, err
    error = err.split("nanotrain: error: ")[1].splitlines()[0]  # it follows the progress bar on one line
    assert "No space left on device" in error
    assert list(out.iterdir()) == []
