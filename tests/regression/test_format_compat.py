"""The committed checkpoint tests/regression/ckpt_v1/ (format version 1) must keep loading and behaving.

It was written once by `python -m tests.regression.regenerate --make-ckpt` (engram-mtp at the micro shape, 300
steps) and is never regenerated: a change to the model, the loader or the format that breaks old checkpoints
fails here. Its pinned behaviour is tests/regression/ckpt_v1_pinned.json (logits within 1e-4, argmax and greedy
text exact). Unknown format versions must be refused with one clear line.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from nanotrain import checkpoint as ckpt
from nanotrain.errors import UserError

from . import spec

MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(spec.CKPT_V1_PINNED.read_text())


def copy_ckpt(tmp_path: Path) -> Path:
    return Path(shutil.copytree(spec.CKPT_V1, tmp_path / "run" / "step_300"))


def set_version(folder: Path, version) -> None:
    config = json.loads((folder / "config.json").read_text())
    if version is None:
        del config["format_version"]
    else:
        config["format_version"] = version
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def test_committed_checkpoint_bytes_are_unchanged_and_small(pinned):
    assert spec.files_sha256(spec.CKPT_V1) == pinned["files_sha256"], (
        "tests/regression/ckpt_v1 was modified; restore it from git (it must never be regenerated)")
    assert sum(p.stat().st_size for p in spec.CKPT_V1.iterdir()) <= MAX_BYTES


def test_committed_checkpoint_declares_format_version_1():
    config = json.loads((spec.CKPT_V1 / "config.json").read_text())
    assert config["format_version"] == 1
    assert ckpt.read_config(spec.CKPT_V1)["recipe"] == spec.CKPT_RECIPE


def test_ckpt_v1_loads_with_nanoeval_and_reproduces_pinned_outputs(pinned):
    measured = spec.pin_checkpoint(spec.CKPT_V1)
    problems = spec.compare_pinned({k: v for k, v in pinned.items() if k != "files_sha256"}, measured)
    assert not problems, "ckpt_v1 no longer behaves as pinned:\n  " + "\n  ".join(problems)


def test_pinned_comparison_catches_changed_logits(pinned):
    base = {k: v for k, v in pinned.items() if k != "files_sha256"}
    moved = {**base, "logits_last_first8": [v + 10 * spec.LOGITS_ATOL for v in base["logits_last_first8"]]}
    assert [p.split(":")[0] for p in spec.compare_pinned(base, moved)] == ["logits_last_first8"]
    nan = {**base, "logits_sum": math.nan, "greedy_text": base["greedy_text"] + "x"}
    assert sorted(p.split(":")[0] for p in spec.compare_pinned(base, nan)) == ["greedy_text", "logits_sum"]


def test_ckpt_v1_trainer_state_still_resumes(tmp_path, fixture_dataset):
    """The optimizer/RNG/schedule state of format 1 loads into today's Trainer, and training continues finitely."""
    import dataclasses

    from nanotrain.data.shards import Dataset
    from nanotrain.train import Trainer

    folder = copy_ckpt(tmp_path)
    saved = ckpt.load_checkpoint(folder)
    extended = dataclasses.replace(saved.train_cfg, total_steps=saved.step + 2)
    with spec.one_thread():
        trainer = Trainer(model_cfg=saved.model_cfg, train_cfg=extended, dataset=Dataset(fixture_dataset),
                          run_dir=tmp_path / "resumed", recipe=saved.recipe, scale="tiny", progress=False,
                          echo=lambda _m: None)
        trainer.resume(folder)
        assert trainer.step == saved.step == 300
        result = trainer.fit(max_steps=1)
    assert result.step == 301 and math.isfinite(result.history[-1]["loss"])


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=["v2", "v0", "string", "absent"])
def test_unknown_format_version_is_refused_with_one_line(tmp_path, version):
    from nanoeval.load import load

    folder = copy_ckpt(tmp_path)
    set_version(folder, version)
    with pytest.raises(UserError) as info:
        load(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and "\n" not in message
    assert "format_version" in message
    code, out, err = spec.run_cli("nanoeval", "score", "--ckpt", folder, "--heldout-tokens", 0, "--prompts", "seed")
    assert code == 2 and out == ""
    assert err.startswith("nanoeval: error: ") and err.count("\n") == 1 and "format_version" in err
