"""The trainer on a real (generated) Rust dataset: exact resume, LR applied per step, re-warm vs jump, NaN guard,
logged metrics. Tiny fp32 models on CPU so every test takes a few seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_train_corpus import FIXTURE_VOCAB, fixture_dataset, one_thread  # noqa: F401  (fixtures)

from nanotrain import checkpoint as ckpt
from nanotrain.config import ModelConfig, TrainConfig
from nanotrain.data.shards import Dataset
from nanotrain.optim.schedule import lr_multiplier, wsd
from nanotrain.train import NanGuard, Trainer, TrainingDiverged


def model_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=FIXTURE_VOCAB, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_multiple_of=16,
                max_seq_len=64, engram_layers=[1], engram_d_mem=8, engram_heads=2, engram_table_size=101,
                mtp_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def train_cfg(**kw) -> TrainConfig:
    base = dict(total_steps=12, warmup_steps=3, batch_size=4, seq_len=32, log_every=1, eval_every=0,
                eval_batches=2, ckpt_every=0, dtype="fp32", lr=0.02, lion_lr=1e-3, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def make(ds_dir: Path, run_dir: Path, mcfg: ModelConfig | None = None, tcfg: TrainConfig | None = None,
         **kw) -> Trainer:
    return Trainer(model_cfg=mcfg or model_cfg(), train_cfg=tcfg or train_cfg(), dataset=Dataset(ds_dir),
                   run_dir=run_dir, recipe="test", scale="tiny", progress=False, echo=lambda m: None, **kw)


def record_batches(trainer: Trainer) -> list[int]:
    """Wrap the loader so the test sees which batch each step trained on (a hash of the ids)."""
    seen: list[int] = []
    orig = trainer.loader.batch

    def batch(step: int):
        x, y = orig(step)
        seen.append(hash(x.numpy().tobytes()))
        return x, y

    trainer.loader.batch = batch
    return seen


def test_exact_resume_matches_uninterrupted_run(fixture_dataset, tmp_path):
    straight = make(fixture_dataset, tmp_path / "a")
    batches_a = record_batches(straight)
    res_a = straight.fit()
    assert res_a.finished and res_a.checkpoint == tmp_path / "a" / "final"
    losses_a = [r["loss"] for r in res_a.history]
    assert len(losses_a) == 12

    first = make(fixture_dataset, tmp_path / "b")
    batches_b = record_batches(first)
    res1 = first.fit(max_steps=6)
    assert res1.reason == "steps" and not res1.finished and res1.checkpoint == tmp_path / "b" / "step_6"
    second = make(fixture_dataset, tmp_path / "b")
    second.resume(ckpt.find_latest(tmp_path / "b"))
    assert second.step == 6
    batches_b2 = record_batches(second)
    res2 = second.fit()
    losses_b = [r["loss"] for r in res1.history + res2.history]
    assert batches_b + batches_b2 == batches_a
    assert losses_b == pytest.approx(losses_a, abs=1e-6)
    assert len(set(batches_a)) == 12  # the batches really differ from step to step
    wa, wb = straight.model.state_dict(), second.model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    assert losses_a[-1] < losses_a[0]


def test_trainer_applies_the_schedule_before_each_step(fixture_dataset, tmp_path):
    tcfg = train_cfg(total_steps=10, warmup_steps=4, decay_frac=0.4)
    trainer = make(fixture_dataset, tmp_path / "run", tcfg=tcfg)
    seen: list[dict[str, float]] = []
    orig_step = trainer.opt.step

    def step(ok):
        seen.append({g["name"]: g["lr"] for _, o in trainer.opt._optimizers() for g in o.param_groups})
        orig_step(ok)

    trainer.opt.step = step
    res = trainer.fit()
    assert len(seen) == 10
    for i, lrs in enumerate(seen):  # update i+1 uses the multiplier of step i
        mult = wsd(i, tcfg)
        assert lrs["muon"] == pytest.approx(tcfg.lr * mult, abs=1e-12)
        assert lrs["lion"] == pytest.approx(tcfg.lion_lr * mult, abs=1e-12)
        assert lrs["muon_engram"] == pytest.approx(tcfg.lr * tcfg.engram_lr_mult * mult, abs=1e-12)
    assert seen[0]["muon"] == 0.0 and max(s["muon"] for s in seen) == pytest.approx(tcfg.lr)
    assert [r["lr"] for r in res.history] == pytest.approx([tcfg.lr * wsd(i, tcfg) for i in range(10)])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    val = [x for x in lines if x["kind"] == "val"]
    assert [x["step"] for x in train] == list(range(1, 11))
    for key in ("loss", "ce", "entropy", "mtp", "lr", "gnorm", "tok_per_s", "step_ms"):
        assert all(isinstance(x[key], float) and math.isfinite(x[key]) for x in train), key
    assert all(x["mfu"] is None for x in train)  # CPU: no known peak
    assert all(x["loss"] > x["ce"] * 0.9 for x in train)
    assert all(0 < x["entropy"] <= math.log(FIXTURE_VOCAB) + 1e-4 for x in train)
    assert len(val) == 1 and val[0]["step"] == 10
    assert val[0]["val_bpb"] == pytest.approx(
        val[0]["val_ce"] / math.log(2) / Dataset(fixture_dataset).bytes_per_token("val"))


def test_extending_a_finished_run_rewarms_or_jumps(fixture_dataset, tmp_path):
    tcfg = train_cfg(total_steps=8, warmup_steps=2)
    make(fixture_dataset, tmp_path / "v1", tcfg=tcfg).fit()
    final = tmp_path / "v1" / "final"
    end_mult = wsd(8, tcfg)
    assert end_mult == pytest.approx(tcfg.min_lr_ratio)
    lrs = {}
    for mode in ("rewarm", "jump"):
        ext = train_cfg(total_steps=20, warmup_steps=2, resume_lr=mode, rewarm_steps=6)
        t = make(fixture_dataset, tmp_path / f"v2-{mode}", tcfg=ext)
        t.resume(final)
        assert t.step == 8
        res = t.fit(max_steps=8)
        lrs[mode] = [r["lr"] for r in res.history]
        want = [ext.lr * lr_multiplier(s, ext, *((8, end_mult) if mode == "rewarm" else ())) for s in range(8, 16)]
        assert lrs[mode] == pytest.approx(want)
    assert lrs["jump"][0] == pytest.approx(ext.lr)  # the original's jump back to the peak
    assert lrs["rewarm"][0] == pytest.approx(ext.lr * end_mult)  # continues where v1 stopped
    assert lrs["rewarm"][1] < 0.3 * ext.lr and lrs["rewarm"][6] == pytest.approx(ext.lr)


def test_nan_step_is_skipped_without_update(fixture_dataset, tmp_path):
    poisoned = {5}
    trainer = make(fixture_dataset, tmp_path / "run",
                   loss_hook=lambda step, loss: loss * float("nan") if step in poisoned else loss)
    trainer.fit(max_steps=4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    res = trainer.fit(max_steps=1)
    assert res.history[-1]["skipped"] == 1 and trainer.guard.skipped_total == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    res = trainer.fit()
    assert res.finished and math.isfinite(res.history[-1]["loss"])


def test_nan_streak_rolls_back_and_halves_lr(fixture_dataset, tmp_path):
    poisoned = {6, 7, 8}
    seen: list[tuple[int, float]] = []

    def hook(step, loss):
        if step in poisoned:
            poisoned.discard(step)
            return loss * float("nan")
        return loss

    trainer = make(fixture_dataset, tmp_path / "run", tcfg=train_cfg(total_steps=14, ckpt_every=4), loss_hook=hook,
                   nan_guard=NanGuard(patience=3, cooldown=5))
    orig_step = trainer.opt.step

    def step(ok):
        if ok.item():  # the test reads the device flag; the trainer does not
            seen.append((trainer.step + 1, trainer.opt.muon.param_groups[0]["lr"]))
        orig_step(ok)

    trainer.opt.step = step
    res = trainer.fit()
    assert res.finished and trainer.guard.rollbacks == 1
    steps = [s for s, _ in seen]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # 6-8 skipped, back to step_4
    tcfg = trainer.train_cfg
    after = dict(seen[5:])
    for s in range(5, 10):  # cooldown: 5 steps at half LR
        assert after[s] == pytest.approx(0.5 * tcfg.lr * wsd(s - 1, tcfg))
    assert after[10] == pytest.approx(tcfg.lr * wsd(9, tcfg))


def test_training_steps_read_nothing_back_between_sync_points(fixture_dataset, tmp_path, monkeypatch):
    """The NaN guard decides on the device: no step reads a value back to the host (the only reads are at log,
    eval and checkpoint points), and a streak found at a later sync point still rolls back to the checkpoint
    before it. Poisoned steps 6-8, log every 5, checkpoint every 4: the streak is found at step 8 (the checkpoint
    point, which must not save the streak), the run goes back to step_4."""
    poisoned = {6, 7, 8}
    in_step = []

    def hook(step, loss):
        if step in poisoned:
            poisoned.discard(step)
            return loss * float("nan")
        return loss

    trainer = make(fixture_dataset, tmp_path / "run", tcfg=train_cfg(total_steps=14, ckpt_every=4, log_every=5),
                   loss_hook=hook, nan_guard=NanGuard(patience=3, cooldown=2))
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if in_step:
                reads.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    orig_step = trainer._train_step

    def step(acc):
        in_step.append(1)
        try:
            orig_step(acc)
        finally:
            in_step.clear()

    trainer._train_step = step
    saves: list[int] = []
    orig_save = trainer.save
    trainer.save = lambda name=None: saves.append(trainer.step) or orig_save(name)
    res = trainer.fit()
    assert reads == []
    assert res.finished and trainer.guard.rollbacks == 1 and trainer.guard.skipped_total == 3
    assert saves == [4, 8, 12, 14]  # step 8 is saved after the rollback, from clean steps 5-8
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [5, 5, 10, 14]  # step 5 again after the rollback
    assert all(r["skipped"] == 0 for r in rows if r["kind"] == "train")


def test_persistent_nan_aborts_after_three_rollbacks(fixture_dataset, tmp_path):
    trainer = make(fixture_dataset, tmp_path / "run", tcfg=train_cfg(total_steps=40, ckpt_every=2),
                   loss_hook=lambda step, loss: loss * float("nan") if step > 2 else loss)
    with pytest.raises(TrainingDiverged, match="after 3 rollbacks"):
        trainer.fit()
    assert trainer.guard.rollbacks == 4


def test_nan_without_checkpoint_is_a_clear_error(fixture_dataset, tmp_path):
    trainer = make(fixture_dataset, tmp_path / "run", loss_hook=lambda step, loss: loss * float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        trainer.fit()


def test_keep_last_checkpoints(fixture_dataset, tmp_path):
    trainer = make(fixture_dataset, tmp_path / "run", tcfg=train_cfg(total_steps=10, ckpt_every=2, keep_last=2,
                                                                      log_every=5))
    trainer.fit()
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert names == ["final", "step_6", "step_8"]
    assert ckpt.find_latest(tmp_path / "run") == tmp_path / "run" / "final"
    assert ckpt.load_checkpoint(tmp_path / "run" / "final").step == 10


def test_ctrl_c_saves_a_checkpoint_and_stops_cleanly(fixture_dataset, tmp_path):
    import os
    import signal

    def hook(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers; the step in flight still completes
        return loss

    trainer = make(fixture_dataset, tmp_path / "run", loss_hook=hook)
    res = trainer.fit()
    assert res.reason == "interrupted" and res.step == 3 and not res.finished
    assert res.checkpoint == tmp_path / "run" / "step_3"
    assert ckpt.find_latest(tmp_path / "run") == res.checkpoint
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    again = make(fixture_dataset, tmp_path / "run")
    again.resume(res.checkpoint)
    assert again.fit().finished


def test_time_budget_stops_with_a_checkpoint(fixture_dataset, tmp_path):
    res = make(fixture_dataset, tmp_path / "run").fit(time_budget_s=1e-9)
    assert res.reason == "time" and res.step == 1 and res.checkpoint == tmp_path / "run" / "step_1"


def test_compile_failure_falls_back_to_eager_with_the_same_losses(fixture_dataset, tmp_path, monkeypatch, capsys):
    eager = make(fixture_dataset, tmp_path / "eager").fit()

    def broken_compile(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("inductor: no C compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallback = make(fixture_dataset, tmp_path / "fallback", tcfg=train_cfg(compile=True)).fit()
    assert fallback.finished
    assert [r["loss"] for r in fallback.history] == pytest.approx([r["loss"] for r in eager.history], abs=1e-6)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "no C compiler found" in err
    assert err.count("torch.compile of the loss failed") == 1
