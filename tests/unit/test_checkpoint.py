"""Checkpoint folders: round trip, atomic writes, clear errors for damaged folders, find_latest fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from nanotrain import checkpoint as ckpt
from nanotrain.config import ModelConfig, TrainConfig
from nanotrain.errors import UserError

VOCAB = 300


def tiny_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_multiple_of=16,
                       max_seq_len=32, engram_layers=[1], engram_d_mem=8, engram_heads=2, engram_table_size=101,
                       mtp_heads=2)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanotrain.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["fn main() {\n    let x = 1;\n}\n" * 20, "pub struct A { b: u32 }\n" * 20], VOCAB)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture
def model():
    from nanotrain.model.gpt import GPT

    torch.manual_seed(0)
    return GPT(tiny_cfg())


def save(folder: Path, model, tokenizer_file: Path, step: int = 7, **kw) -> Path:
    state = {"step": step, "optimizer": {"x": torch.arange(3)}}
    return ckpt.save_checkpoint(folder, model=model, model_cfg=tiny_cfg(), train_cfg=TrainConfig(total_steps=50),
                                recipe="engram-v1", scale="tiny", tokenizer_path=tokenizer_file, step=step,
                                trainer_state=state, metrics={"train": {"loss": 1.5}}, **kw)


def test_round_trip_restores_weights_and_configs(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "run" / "step_7", model, tokenizer_file)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.TOKENIZER_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE,
         ckpt.MANIFEST_FILE])
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step_7"]  # no temp folder left behind
    loaded = ckpt.load_checkpoint(folder)
    assert loaded.step == 7 and loaded.recipe == "engram-v1"
    assert loaded.model_cfg == tiny_cfg() and loaded.train_cfg.total_steps == 50
    assert loaded.config_json["format_version"] == ckpt.FORMAT_VERSION
    assert loaded.config_json["torch_version"] == torch.__version__
    assert not loaded.model.training
    want = model.state_dict()
    got = loaded.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = torch.randint(0, VOCAB, (2, 16))
    model.eval()
    assert torch.equal(model(x).logits, loaded.model(x).logits)
    assert (folder / ckpt.TOKENIZER_FILE).read_bytes() == tokenizer_file.read_bytes()
    assert ckpt.load_trainer_state(folder)["step"] == 7
    assert json.loads((folder / ckpt.METRICS_FILE).read_text())["train"]["loss"] == 1.5


def test_load_with_dtype(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    loaded = ckpt.load_checkpoint(folder, dtype=torch.bfloat16)
    assert loaded.model.tok_embed.weight.dtype == torch.bfloat16


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, model, tokenizer_file, monkeypatch):
    folder = save(tmp_path / "final", model, tokenizer_file, step=3)
    before = (folder / ckpt.MODEL_FILE).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with torch.no_grad():
        model.tok_embed.weight.add_(1.0)
    with pytest.raises(UserError, match=r"final: cannot write checkpoint \(disk full\)"):
        save(folder, model, tokenizer_file, step=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (folder / ckpt.MODEL_FILE).read_bytes() == before
    assert ckpt.read_config(folder)["step"] == 3


def test_overwrite_replaces_whole_folder(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file, step=3)
    save(folder, model, tokenizer_file, step=4)
    assert ckpt.read_config(folder)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope")


def test_not_a_checkpoint_names_missing_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"not a checkpoint \(missing model.safetensors, tokenizer.json\)"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 100, -1])
def test_truncated_weights_are_a_clear_error(tmp_path, model, tokenizer_file, keep):
    folder = save(tmp_path / "final", model, tokenizer_file)
    path = folder / ckpt.MODEL_FILE
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors: truncated"):
        ckpt.load_checkpoint(folder)


def test_garbage_weights_are_a_clear_error(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    (folder / ckpt.MODEL_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(UserError, match="model.safetensors: corrupt"):
        ckpt.load_checkpoint(folder)


def _edit_config(folder: Path, fn) -> None:
    cfg = json.loads((folder / ckpt.CONFIG_FILE).read_text())
    fn(cfg)
    (folder / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))


def test_unknown_format_version(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    _edit_config(folder, lambda c: c.update(format_version=99))
    with pytest.raises(UserError, match="unknown checkpoint format_version 99"):
        ckpt.load_checkpoint(folder)


def test_unknown_config_keys(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    _edit_config(folder, lambda c: c["model"].update(dimm=3))
    with pytest.raises(UserError, match="bad model config: .*dimm"):
        ckpt.load_checkpoint(folder)
    _edit_config(folder, lambda c: (c["model"].pop("dimm"), c.update(extra=1)))
    with pytest.raises(UserError, match="unknown key.*extra"):
        ckpt.load_checkpoint(folder)


def test_weights_for_another_model_are_refused(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    _edit_config(folder, lambda c: c["model"].update(n_layers=3))
    with pytest.raises(UserError, match="config.json: .* manifest.json says"):  # the edit is caught first
        ckpt.load_checkpoint(folder)
    with pytest.raises(UserError, match="do not match the model config.*missing blocks.2"):
        ckpt.load_checkpoint(folder, verify=False)


def test_non_finite_weights_are_refused(tmp_path, model, tokenizer_file):
    with torch.no_grad():
        model.norm_final.weight[0] = float("nan")
    folder = save(tmp_path / "final", model, tokenizer_file)
    with pytest.raises(UserError, match="model.safetensors: weights hold non-finite values \\(norm_final.weight\\)"):
        ckpt.load_checkpoint(folder)


def test_truncated_trainer_state_is_a_clear_error(tmp_path, model, tokenizer_file):
    folder = save(tmp_path / "final", model, tokenizer_file)
    p = folder / ckpt.STATE_FILE
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(UserError, match="trainer_state.pt: unreadable"):
        ckpt.load_trainer_state(folder)


def test_truncated_trainer_state_is_skipped_by_find_latest(tmp_path, model, tokenizer_file):
    run = tmp_path / "run"
    for s in (2, 4):
        save(run / f"step_{s}", model, tokenizer_file, step=s)
    p = run / "step_4" / ckpt.STATE_FILE
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert ckpt.find_latest(run) == run / "step_2"


def test_find_latest_skips_incomplete_and_temp(tmp_path, model, tokenizer_file):
    run = tmp_path / "run"
    assert ckpt.find_latest(run) is None
    for s in (2, 4, 6):
        save(run / f"step_{s}", model, tokenizer_file, step=s)
    (run / ".tmp-step_8-123-456").mkdir()  # a save that crashed before its rename
    assert ckpt.find_latest(run) == run / "step_6"
    p = run / "step_6" / ckpt.MODEL_FILE
    p.write_bytes(p.read_bytes()[:-10])  # truncated weights: fall back
    assert ckpt.find_latest(run) == run / "step_4"
    os.remove(run / "step_4" / ckpt.STATE_FILE)  # not resumable: fall back again
    assert ckpt.find_latest(run) == run / "step_2"
    save(run / "final", model, tokenizer_file, step=10)
    assert ckpt.find_latest(run) == run / "final"


def test_prune_keeps_newest_step_folders(tmp_path, model, tokenizer_file):
    run = tmp_path / "run"
    for s in (10, 20, 30, 40):
        save(run / f"step_{s}", model, tokenizer_file, step=s)
    save(run / "final", model, tokenizer_file, step=50)
    ckpt.prune_step_checkpoints(run, keep=2)
    assert sorted(p.name for p in run.iterdir()) == ["final", "step_30", "step_40"]
