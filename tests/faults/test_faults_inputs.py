"""Inputs refused up front with one line and exit 2, never a traceback or garbage: prompts that are not UTF-8,
non-finite sampling numbers, unknown or unavailable devices (nanoeval), non-regular files given to check-rust, and
a `data build` whose vocabulary comes out smaller than asked (a warning) or whose split ends up empty."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from regression import spec

PROMPT = "fn main() {"


@pytest.fixture
def engram(tiny_checkpoint_factory):
    return tiny_checkpoint_factory("engram-v1")


def one_line(code: int, err: str, prog: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def generate(ckpt: Path, *flags) -> tuple[int, str, str]:
    return spec.run_cli("nanoeval", "generate", "--ckpt", ckpt, "--max-new-tokens", 4, "--no-stream", *flags)


def score(ckpt: Path, tmp_path: Path, *flags) -> tuple[int, str, str]:
    return spec.run_cli("nanoeval", "score", "--ckpt", ckpt, "--heldout-tokens", 0, "--prompts", "seed",
                        "--max-new-tokens", 4,
                        "--out", tmp_path / "score.json", *flags)


def test_a_prompt_that_is_not_utf8_is_one_clear_line(engram):
    """What Python makes of a Latin-1 byte in argv (a lone surrogate), which the tokenizer cannot take."""
    prompt = os.fsdecode(b"fn caf\xe9() {")
    code, out, err = generate(engram, "--prompt", prompt)
    one_line(code, err, "nanoeval", "--prompt: not valid UTF-8 text (byte 0xe9 at character 6)")
    assert out == ""
    code, out, err = generate(engram, "--prompt", PROMPT, "--stop", os.fsdecode(b"\xff"))
    one_line(code, err, "nanoeval", "--stop: not valid UTF-8 text (byte 0xff")


@pytest.mark.parametrize("flag, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--top-p", "nan"), ("--repetition-penalty", "inf"),
    ("--repetition-penalty", "nan"),
])
def test_non_finite_sampling_numbers_are_refused(engram, tmp_path, flag, value):
    code, _, err = generate(engram, "--prompt", PROMPT, flag, value)
    one_line(code, err, "nanoeval", f"{flag} {value}: must be a finite number")
    code, _, err = score(engram, tmp_path, flag, value)
    one_line(code, err, "nanoeval", f"{flag} {value}: must be a finite number")
    assert not (tmp_path / "score.json").exists()


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cuda:0", "mps", "gpu"])
def test_unknown_device_is_refused_by_the_parser(engram, tmp_path, device):
    """Every command takes the same `--device {auto,cpu,cuda}`; anything else is argparse's usage error."""
    for code, out, err in (generate(engram, "--prompt", PROMPT, "--device", device),
                           score(engram, tmp_path, "--device", device),
                           spec.run_cli("nanoeval", "causality", "--ckpt", engram, "--device", device),
                           spec.run_cli("nanotrain", "run", "engram-v1", "--device", device)):
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert err.startswith("usage: "), err
        assert err.splitlines()[-1].endswith(
            f"error: argument --device: invalid choice: '{device}' (choose from 'auto', 'cpu', 'cuda')"), err


def test_unavailable_cuda_is_one_line(engram, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    for code, _, err in (generate(engram, "--prompt", PROMPT, "--device", "cuda"),
                         score(engram, tmp_path, "--device", "cuda"),
                         spec.run_cli("nanoeval", "causality", "--ckpt", engram, "--device", "cuda")):
        one_line(code, err, "nanoeval", "--device cuda: no CUDA GPU is visible")
    code, _, err = spec.run_cli("nanotrain", "run", "engram-v1", "--device", "cuda", "--out", tmp_path)
    one_line(code, err, "nanotrain", "--device cuda: no CUDA GPU is visible")
    assert not (tmp_path / "engram-v1").exists()


def test_device_auto_picks_an_available_device(engram):
    code, out, err = generate(engram, "--prompt", PROMPT, "--device", "auto", "--temperature", 0)
    assert code == 0 and out.startswith(PROMPT), err


@pytest.mark.parametrize("kind", ["fifo", "chardev", "dangling"])
def test_check_rust_names_what_a_non_regular_file_is(tmp_path, kind):
    if kind == "fifo":
        path, what = tmp_path / "pipe.rs", "not a regular file (a FIFO)"
        os.mkfifo(path)
    elif kind == "chardev":
        path, what = Path("/dev/zero"), "not a regular file (a character device)"
    else:
        path, what = tmp_path / "gone.rs", "broken symlink"
        path.symlink_to(tmp_path / "nowhere.rs")
    code, out, err = spec.run_cli("nanoeval", "check-rust", path)
    assert code == 2 and out == "" and err == f"nanoeval: error: {what}: {path}\n"


def _small_corpus(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("sorting.rs", "lib.rs", "ffi.rs"):
        shutil.copy(spec.CORPUS / name, src / name)
    return src


def test_data_build_warns_when_the_vocabulary_comes_out_smaller_than_asked(tmp_path):
    code, out, err = spec.run_cli("nanotrain", "data", "build", "--src", _small_corpus(tmp_path), "--out",
                                  tmp_path / "ds", "--vocab", 4096, "--split", "100/0/0", "--workers", 1)
    assert code == 0, err
    vocab = int(out.split("\nvocab ")[1].split()[0])
    assert vocab < 4096
    assert (f"warning: the tokenizer has {vocab} tokens, fewer than --vocab 4096: the training text holds no more "
            f"merges; this dataset fits only models with vocab_size {vocab}") in err


def test_data_build_refuses_a_split_that_ends_up_empty(tmp_path):
    code, out, err = spec.run_cli("nanotrain", "data", "build", "--src", _small_corpus(tmp_path), "--out",
                                  tmp_path / "ds", "--vocab", 300, "--split", "98/1/1", "--workers", 1)
    assert code == 2 and err.count("nanotrain: error: ") == 1 and "Traceback" not in err, err
    assert "nanotrain: error: --split 98/1/1: no file landed in the val split (3 usable files in 1 crate)" in err
    assert not (tmp_path / "ds").exists()


def test_disk_full_while_writing_the_score_report_is_one_line(engram, tmpfs):
    out = tmpfs("4k")
    code, _, err = spec.run_cli("nanoeval", "score", "--ckpt", engram, "--heldout-tokens", 0, "--prompts", "seed",
                                "--max-new-tokens", 4, "--out", out / "score.json")
    assert code == 2 and err.count("nanoeval: error: ") == 1 and "Traceback" not in err, err
    assert "No space left on device" in err.split("nanoeval: error: ")[1]
    assert list(out.iterdir()) == []
