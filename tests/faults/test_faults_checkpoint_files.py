"""Damaged checkpoint files met by `nanoeval score`: truncated, zero-byte or garbage weights, a bit flip in the
tensor data, non-finite weights. Each must end in one clear line naming the file (exit 2), never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from regression import spec
from safetensors.torch import load_file, save_file

from nanotrain import checkpoint as ckpt


@pytest.fixture
def copy(tmp_path, tiny_checkpoint_factory, one_thread) -> Path:
    """A private copy of a tiny engram-v1 checkpoint (the session's real trained one)."""
    return Path(shutil.copytree(tiny_checkpoint_factory("engram-v1"), tmp_path / "run" / "final"))


def score(folder: Path, *flags) -> tuple[int, str, str]:
    return spec.run_cli("nanoeval", "score", "--ckpt", folder, "--heldout-tokens", 0, "--prompts", "seed",
                        "--max-new-tokens", 4, "--out", folder.parent / "score.json", *flags)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("nanoeval: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999], ids=["empty", "half", "last-byte-missing"])
def test_truncated_weights_are_one_clear_line(copy, keep):
    path = copy / ckpt.MODEL_FILE
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))
    code, _, err = score(copy)
    assert_one_line_error(code, err, str(path), "truncated")
    assert not (copy.parent / "score.json").exists()


def test_garbage_header_is_one_clear_line(copy):
    path = copy / ckpt.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header
    path.write_bytes(bytes(data))
    code, _, err = score(copy)
    assert_one_line_error(code, err, str(path), "corrupt")


def test_missing_tokenizer_is_one_clear_line(copy):
    (copy / ckpt.TOKENIZER_FILE).unlink()
    code, _, err = score(copy)
    assert_one_line_error(code, err, str(copy), "missing tokenizer.json")


def test_non_finite_weights_are_one_clear_line(copy):
    """A checkpoint whose weights hold NaN must not produce a report of NaN metrics or a sampler crash: the
    manifest refuses the rewritten file, and without it (--no-verify) the loader's finiteness check does."""
    weights = load_file(str(copy / ckpt.MODEL_FILE))
    weights["norm_final.weight"][:] = float("nan")
    save_file(weights, str(copy / ckpt.MODEL_FILE), metadata={"format": "pt"})
    code, _, err = score(copy, "--temperature", "0.7")
    assert_one_line_error(code, err, str(copy / ckpt.MODEL_FILE), "sha256 mismatch")
    code, _, err = score(copy, "--temperature", "0.7", "--no-verify")
    assert_one_line_error(code, err, str(copy), "non-finite")


def test_bit_flip_inside_tensor_data_is_detected(copy):
    """Header and size stay valid, so only the manifest's sha256 can tell."""
    path = copy / ckpt.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # the last tensor's bytes, far from the header
    path.write_bytes(bytes(data))
    code, _, err = score(copy)
    assert_one_line_error(code, err, str(path), "sha256 mismatch")
    code, _, err = score(copy, "--no-verify")
    assert code == 0, err
