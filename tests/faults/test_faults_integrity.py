"""Checkpoints that verify themselves: every checkpoint carries a manifest.json (each file's size and sha256, the
tokenizer's hash and vocab size), and score, generate, compare, the demo and resume refuse files that differ from
it with one line naming the file. Damage that keeps a file's length and header valid (random finite bytes in the
weights, a damaged optimizer state, a tokenizer of another vocabulary) used to load silently."""

from __future__ import annotations

import json
import random
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from regression import spec

from nanotrain import checkpoint as ckpt
from nanotrain.errors import UserError

from .conftest import step_dirs


@pytest.fixture
def copy(tmp_path, tiny_checkpoint_factory) -> Path:
    """A private copy of the session's tiny engram-v1 checkpoint, written by the real trainer."""
    return Path(shutil.copytree(tiny_checkpoint_factory("engram-v1"), tmp_path / "run" / "final"))


def finite_noise(path: Path, n_bytes: int = 4096) -> None:
    """Overwrite `n_bytes` in the middle of the tensor data with random *finite* float32 values: the header, the
    length and the finiteness check all stay happy."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len + (len(data) - 8 - header_len) // 2
    start -= start % 4
    rng = random.Random(0)
    data[start:start + n_bytes] = b"".join(struct.pack("<f", rng.uniform(-8, 8)) for _ in range(n_bytes // 4))
    path.write_bytes(bytes(data))


def one_line(code: int, err: str, prog: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_every_checkpoint_carries_a_manifest_of_its_files(copy):
    manifest = json.loads((copy / ckpt.MANIFEST_FILE).read_text())
    assert manifest["format_version"] == ckpt.FORMAT_VERSION
    files = {p.name for p in copy.iterdir()} - {ckpt.MANIFEST_FILE}
    assert set(manifest["files"]) == files == {ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.TOKENIZER_FILE,
                                               ckpt.STATE_FILE, ckpt.METRICS_FILE}
    import hashlib

    for name, entry in manifest["files"].items():
        data = (copy / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["tokenizer"] == {"sha256": manifest["files"][ckpt.TOKENIZER_FILE]["sha256"],
                                     "vocab_size": json.loads((copy / ckpt.CONFIG_FILE).read_text())
                                     ["model"]["vocab_size"]}


def test_random_finite_bytes_in_the_weights_are_refused_by_score_and_generate(copy):
    path = copy / ckpt.MODEL_FILE
    finite_noise(path)
    ckpt.read_config(copy)  # header and length are still valid: only the content hash can tell
    code, _, err = spec.run_cli("nanoeval", "score", "--ckpt", copy, "--heldout-tokens", 0, "--prompts", "seed",
                                "--max-new-tokens", 4,
                                "--out", copy.parent / "score.json")
    one_line(code, err, "nanoeval", str(path), "sha256 mismatch")
    assert not (copy.parent / "score.json").exists()
    code, out, err = spec.run_cli("nanoeval", "generate", "--ckpt", copy, "--prompt", "fn main() {",
                                  "--max-new-tokens", 4, "--no-stream")
    one_line(code, err, "nanoeval", str(path), "sha256 mismatch")
    assert out == ""
    code, _, err = spec.run_cli("nanoeval", "generate", "--ckpt", copy, "--prompt", "fn main() {",
                                "--max-new-tokens", 4, "--no-stream", "--no-verify")
    assert code == 0, err


def test_a_tokenizer_of_another_vocabulary_is_refused_by_generate(copy):
    """The committed regression checkpoint's tokenizer has the same size (512) but other merges: ids would decode
    to the wrong text."""
    other = spec.CKPT_V1 / ckpt.TOKENIZER_FILE
    assert other.read_bytes() != (copy / ckpt.TOKENIZER_FILE).read_bytes()
    shutil.copyfile(other, copy / ckpt.TOKENIZER_FILE)
    code, out, err = spec.run_cli("nanoeval", "generate", "--ckpt", copy, "--prompt", "fn main() {",
                                  "--max-new-tokens", 4, "--no-stream")
    one_line(code, err, "nanoeval", str(copy / ckpt.TOKENIZER_FILE))
    assert out == ""


def test_compare_refuses_edited_training_metrics(copy):
    metrics = json.loads((copy / ckpt.METRICS_FILE).read_text())
    metrics["train"]["loss"] = 0.5
    (copy / ckpt.METRICS_FILE).write_text(json.dumps(metrics))
    code, out, err = spec.run_cli("nanoeval", "compare", copy)
    one_line(code, err, "nanoeval", str(copy / ckpt.METRICS_FILE))
    code, out, err = spec.run_cli("nanoeval", "compare", copy, "--no-verify")
    assert code == 0 and "0.5" in out, err


def test_the_demo_refuses_a_damaged_checkpoint(copy):
    if str(spec.REPO) not in sys.path:
        sys.path.insert(0, str(spec.REPO))
    from apps.demo import ModelCache

    finite_noise(copy / ckpt.MODEL_FILE)
    with pytest.raises(UserError, match="sha256 mismatch") as info:
        ModelCache(1).get(copy)
    assert str(copy / ckpt.MODEL_FILE) in str(info.value)
    assert ModelCache(1, verify=False).get(copy).loaded.step == 4  # `python -m apps.demo --no-verify`


def test_checkpoint_without_manifest_still_loads(tmp_path):
    """Checkpoints written before manifests existed (the committed ckpt_v1) load unverified, without a note."""
    old = Path(shutil.copytree(spec.CKPT_V1, tmp_path / "run" / "final"))
    assert not (old / ckpt.MANIFEST_FILE).exists()
    assert ckpt.verify_manifest(old) is None
    code, out, err = spec.run_cli("nanoeval", "generate", "--ckpt", old, "--prompt", "fn main() {",
                                  "--max-new-tokens", 2, "--no-stream", "--temperature", 0)
    assert code == 0 and out.startswith("fn main() {") and "manifest" not in err, err


def damage_trainer_state(path: Path) -> None:
    """4 KB of random bytes in the middle of the largest tensor stored in trainer_state.pt: the zip structure
    stays whole, so torch.load reads it without complaint."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        entry = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2 - 2048
    data[start:start + 4096] = random.Random(1).randbytes(4096)
    path.write_bytes(bytes(data))
    assert entry.file_size > 8192
    ckpt.load_trainer_state(path.parent)  # still loads


def test_resume_refuses_a_damaged_trainer_state_and_auto_falls_back(tmp_path, micro_run):
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 4)[0] == 0
    damage_trainer_state(run / "step_4" / ckpt.STATE_FILE)
    code, out, err = micro_run("--resume", run / "step_4", "--name", "other")
    one_line(code, err, "nanotrain", str(run / "step_4" / ckpt.STATE_FILE), "sha256 mismatch")
    assert not (tmp_path / "runs" / "other").exists()
    code, out, err = micro_run("--resume", "auto", "--steps", 1)
    assert code == 0, err
    assert "--resume auto: skipping step_4 (incomplete or damaged)" in out
    assert f"resumed from {run / 'step_2'} at step 2" in out


def poison(obj) -> None:
    """Fill every float tensor (of more than one element) found in `obj` with NaN, in place."""
    if torch.is_tensor(obj) and obj.is_floating_point() and obj.numel() > 1:
        obj.fill_(float("nan"))
    elif isinstance(obj, dict):
        for v in obj.values():
            poison(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            poison(v)


def test_resume_that_yields_non_finite_weights_stops_and_writes_no_checkpoint(tmp_path, micro_run):
    """Past the manifest (--no-verify), an optimizer state full of NaN turns the weights NaN on the first update.
    The validation at the end of the invocation, or the next checkpoint, must stop the run with one line and
    write nothing: no final/, no step folder of NaN weights."""
    run = tmp_path / "runs" / "engram-v1"
    assert micro_run("--ckpt-every", 2, "--steps", 2)[0] == 0
    state = ckpt.load_trainer_state(run / "step_2")
    poison(state["optimizer"])
    torch.save(state, run / "step_2" / ckpt.STATE_FILE)
    code, out, err = micro_run("--resume", "auto", "--no-verify", "--steps", 1)  # stops at 3: val, then save
    one_line(code, err, "nanotrain", "step 3: validation CE is nan")
    code, out, err = micro_run("--resume", "auto", "--no-verify")  # to the end: the step_4 save comes first
    one_line(code, err, "nanotrain", "step 4: weights hold non-finite values", f"not writing {run / 'step_4'}")
    assert step_dirs(run) == ["step_2"]
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
