"""`nanotrain run`: clear errors, pause/resume, engram-v2's re-warm vs jump, every recipe at tiny scale.

The recipes' tiny shape is shrunk further (and its vocab set to the fixture tokenizer's) by patching the scale
tables for these tests, so each run takes a second or two on one CPU thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train_corpus import FIXTURE_VOCAB, fixture_dataset, one_thread  # noqa: F401  (fixtures)

from nanotrain import recipes
from nanotrain.cli import main
from nanotrain.data.shards import Dataset
from nanotrain.train import Trainer

TEST_SHAPE = dict(vocab_size=FIXTURE_VOCAB, dim=32, n_layers=5, n_heads=2, n_kv_heads=1, ffn_mult=2.0,
                  ffn_multiple_of=16, max_seq_len=64, engram_d_mem=8, engram_table_size=101, engram_heads=2,
                  wavefield_field_size=16, wavefield_haar_levels=2)
TEST_TRAIN = dict(batch_size=4, seq_len=32, total_steps=10, warmup_steps=2, lr=0.02, lion_lr=1e-3, log_every=2,
                  eval_every=4, eval_batches=2, ckpt_every=4, dtype="fp32")


@pytest.fixture
def small_tiny(monkeypatch):
    monkeypatch.setitem(recipes.SCALE_MODEL, "tiny", TEST_SHAPE)
    monkeypatch.setitem(recipes.SCALE_TRAIN, "tiny", TEST_TRAIN)


def nanotrain(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == kind]


def test_unknown_recipe_lists_valid_ones(capsys):
    code, _, err = nanotrain(capsys, "run", "engram-v9")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert "unknown recipe 'engram-v9'" in err and "engram-v1" in err and "haar-v5" in err


@pytest.mark.parametrize("flag", [[], ["--no-cuda-graphs"]])
def test_cpu_run_has_no_cuda_graphs_and_no_cuda_graphs_is_allowed(capsys, tmp_path, fixture_dataset, small_tiny,
                                                                  flag):
    """On a CPU the default leaves CUDA graphs off without a word, and --no-cuda-graphs is accepted anywhere."""
    code, out, err = nanotrain(capsys, "run", "baseline-v1", "--scale", "tiny", "--data", fixture_dataset, "--out",
                               tmp_path, "--steps", 2, "--no-progress", *flag)
    assert code == 0, err
    assert "cuda graphs" not in out and "cuda-graphs" not in out
    assert (tmp_path / "baseline-v1" / "step_2").is_dir()


def test_missing_dataset(capsys, tmp_path):
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--data", tmp_path / "nope", "--out", tmp_path)
    assert code == 2 and "nope: dataset folder not found" in err


def test_full_scale_without_data_uses_the_full_corpus(capsys, tmp_path, monkeypatch):
    """At full scale the default dataset is the full corpus; at tiny scale the quickstart set (nothing fetched)."""
    from nanotrain.data import default
    from nanotrain.errors import UserError

    asked = []

    def stop(path=None, progress=True, scale="tiny"):
        asked.append(scale)
        raise UserError(f"would build {default.default_data_source(scale)[:2]}")

    monkeypatch.setattr(default, "ensure_default_dataset", stop)
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--scale", "full", "--device", "cpu", "--out", tmp_path)
    assert code == 2 and "would build ('all', True)" in err
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--scale", "tiny", "--device", "cpu", "--out", tmp_path)
    assert code == 2 and "would build ('popular', False)" in err
    assert asked == ["full", "tiny"]


def test_a_run_longer_than_its_data_says_so_in_one_line(capsys, tmp_path, fixture_dataset, small_tiny):
    train_tokens = len(Dataset(fixture_dataset).tokens("train"))
    per_step = TEST_TRAIN["batch_size"] * TEST_TRAIN["seq_len"]
    fits = train_tokens // per_step
    args = ("run", "baseline", "--scale", "tiny", "--data", fixture_dataset, "--out", tmp_path, "--steps", 1,
            "--no-progress")
    code, out, err = nanotrain(capsys, *args, "--name", "fits", "--total-steps", fits)
    assert code == 0, err
    assert "more than once" not in out
    code, out, err = nanotrain(capsys, *args, "--name", "repeats", "--total-steps", 2 * fits + 2)
    assert code == 0, err
    lines = [x for x in out.splitlines() if "more than once" in x]
    assert len(lines) == 1
    read = (2 * fits + 2) * per_step
    assert f"reads {read / 1e6:.1f}M training tokens, {read / train_tokens:.1f}x the" in lines[0]
    assert str(fixture_dataset) in lines[0]


def test_vocab_mismatch(capsys, tmp_path, fixture_dataset):
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--data", fixture_dataset, "--out", tmp_path)
    assert code == 2
    assert f"tokenizer vocab {FIXTURE_VOCAB} does not match recipe engram-v1's vocab_size 4096" in err


def test_resume_from_a_folder_that_is_not_a_checkpoint(capsys, tmp_path, fixture_dataset, small_tiny):
    (tmp_path / "junk").mkdir()
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--data", fixture_dataset, "--out", tmp_path,
                             "--resume", tmp_path / "junk")
    assert code == 2 and "junk: not a checkpoint (missing model.safetensors, config.json, tokenizer.json)" in err


def test_bad_flag_values(capsys, tmp_path, fixture_dataset, small_tiny):
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--data", fixture_dataset, "--steps", 0)
    assert code == 2 and "--steps 0: must be positive" in err
    code, _, err = nanotrain(capsys, "run", "engram-v1", "--data", fixture_dataset, "--out", tmp_path,
                             "--seq-len", 65)
    assert code == 2 and "--seq-len 65: longer than the model's max_seq_len 64" in err


def test_pause_resume_finish_and_refuse_to_overwrite(capsys, tmp_path, fixture_dataset, small_tiny):
    args = ("run", "engram-v1", "--data", fixture_dataset, "--out", tmp_path, "--no-progress")
    code, out, _ = nanotrain(capsys, *args, "--steps", 3)
    assert code == 0
    assert "scale: tiny (auto: no GPU, training on CPU)" in out
    assert "stopped at step 3 of 10" in out and "--resume auto" in out
    run = tmp_path / "engram-v1"
    assert (run / "step_3" / "model.safetensors").is_file()

    code, _, err = nanotrain(capsys, *args)
    assert code == 2 and "already holds checkpoints; pass --resume auto" in err

    code, out, _ = nanotrain(capsys, *args, "--resume", "auto")
    assert code == 0
    assert "resumed from" in out and "step_3 at step 3" in out
    final_line = out.strip().splitlines()[-1]
    assert final_line.startswith(f"done: {run / 'final'} (step 10); val CE ")
    assert "bits/byte" in final_line
    steps = [x["step"] for x in metrics(run)]
    assert steps == [2, 3, 4, 6, 8, 10]
    assert [x["step"] for x in metrics(run, "val")] == [3, 4, 8, 10]
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["final", "step_3", "step_4", "step_8"]

    code, _, err = nanotrain(capsys, *args)
    assert code == 2 and "already holds a finished run (final/)" in err
    code, _, err = nanotrain(capsys, *args, "--resume", "auto")
    assert code == 2 and "already at step 10 of 10; pass a larger --total-steps" in err


def test_engram_v2_rewarms_and_jump_reproduces_the_spike(capsys, tmp_path, fixture_dataset, small_tiny):
    base = ("--data", fixture_dataset, "--out", tmp_path, "--no-progress", "--log-every", 1)
    code, _, err = nanotrain(capsys, "run", "engram-v2", *base)
    assert code == 2 and "continues" in err and "engram-v1/final, which does not exist" in err
    assert nanotrain(capsys, "run", "engram-v1", *base)[0] == 0
    code, out, _ = nanotrain(capsys, "run", "engram-v2", *base, "--rewarm-steps", 4)
    assert code == 0 and "LR re-warms over 4 steps" in out
    code, out, _ = nanotrain(capsys, "run", "engram-v2", *base, "--resume-lr", "jump", "--name", "v2-jump")
    assert code == 0
    rewarm, jump = metrics(tmp_path / "engram-v2"), metrics(tmp_path / "v2-jump")
    assert [x["step"] for x in rewarm] == list(range(11, 17))  # 10 * 1.6 = 16 total steps
    peak, v1_last = TEST_TRAIN["lr"], metrics(tmp_path / "engram-v1")[-1]["lr"]
    assert jump[0]["lr"] == pytest.approx(peak)  # the original's jump back to the peak
    assert rewarm[0]["lr"] == pytest.approx(0.1 * peak)  # continues at the end of v1's decay (min_lr_ratio)
    assert rewarm[0]["lr"] < v1_last
    assert rewarm[1]["lr"] < jump[1]["lr"] and rewarm[2]["lr"] < jump[2]["lr"]


@pytest.mark.parametrize("name", [n for n, r in recipes.RECIPES.items() if not r.resume_from])
def test_every_recipe_trains_at_tiny_scale(capsys, tmp_path, fixture_dataset, small_tiny, name):
    code, out, err = nanotrain(capsys, "run", name, "--data", fixture_dataset, "--out", tmp_path, "--steps", 2,
                               "--no-progress", "--dtype", "bf16")
    assert code == 0, err
    rows = metrics(tmp_path / name)
    assert rows[-1]["step"] == 2 and all(r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("name", [n for n, r in recipes.RECIPES.items() if not r.resume_from])
def test_every_recipe_fits_a_fixed_batch(tmp_path, fixture_dataset, name):
    """50 steps on one batch must drive the loss well down: catches broken gradients in any feature.
    (5 layers so that LoopLM really loops: 2 local blocks before, 1 shared, 2 after.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(recipes.SCALE_MODEL, "tiny", TEST_SHAPE)
        model_cfg, train_cfg = recipes.get_recipe(name).build("tiny")
    for k, v in dict(total_steps=50, warmup_steps=5, log_every=5, eval_every=0, ckpt_every=0, batch_size=4,
                     seq_len=32, dtype="fp32", lr=0.02, lion_lr=2e-3).items():
        setattr(train_cfg, k, v)
    trainer = Trainer(model_cfg=model_cfg, train_cfg=train_cfg, dataset=Dataset(fixture_dataset),
                      run_dir=tmp_path / name, recipe=name, progress=False, echo=lambda m: None)
    fixed = trainer.loader.batch(0)
    trainer.loader.batch = lambda step: fixed
    res = trainer.fit()
    first, last = res.history[0]["ce"], res.history[-1]["ce"]
    assert last < 0.6 * first, (first, last)  # ~ln(vocab) at the start; a broken gradient stays there
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
