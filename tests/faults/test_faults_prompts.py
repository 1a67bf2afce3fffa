"""Prompts at the edges, through the real `nanoeval generate` / `nanoeval score` CLIs on a tiny trained checkpoint:
empty (documented: starts from `<eos>`), longer than the context (documented: cut from the left and flagged), a
token budget that leaves no room for a prompt, and broken prompt files (one clear line naming file and line)."""

from __future__ import annotations

import json

import pytest
from regression import spec


@pytest.fixture
def engram(tiny_checkpoint_factory, one_thread):
    """The session's tiny engram-v1 checkpoint (trained on first use, on one thread: much faster on a busy box)."""
    return tiny_checkpoint_factory("engram-v1")


def context_of(ckpt) -> int:
    return json.loads((ckpt / "config.json").read_text())["model"]["max_seq_len"]


def generate(ckpt, prompt: str, *flags) -> tuple[int, str, str]:
    return spec.run_cli("nanoeval", "generate", "--ckpt", ckpt, "--prompt", prompt, "--temperature", 0,
                        "--max-new-tokens", 8, "--no-stream", *flags)


def test_empty_prompt_generates_a_new_file(engram):
    code, out, err = generate(engram, "")
    assert code == 0, err
    assert "tokens, finish=" in err and "prompt cut" not in err
    assert int(err.split("[")[1].split(" tokens")[0]) >= 1


def test_prompt_longer_than_the_context_is_cut_from_the_left_and_flagged(engram):
    long_prompt = "fn f() { let x = 1; }\n" * (4 * context_of(engram))
    code, out, err = generate(engram, long_prompt)
    assert code == 0, err
    assert "(prompt cut from the left to fit the context)" in err
    assert out.startswith(long_prompt)


def test_max_new_tokens_filling_the_context_is_one_clear_line(engram):
    n = context_of(engram)
    code, out, err = generate(engram, "fn main() {", "--max-new-tokens", n)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"nanoeval: error: --max-new-tokens {n}: leaves no room for a prompt")


def test_score_reports_empty_and_overlong_prompts_per_sample(engram, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    long_prompt = "let v = vec![1, 2, 3];\n" * (4 * context_of(engram))
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("", long_prompt, "fn main() {")) + "\n")
    out = tmp_path / "score.json"
    code, _, err = spec.run_cli("nanoeval", "score", "--ckpt", engram, "--prompts", prompts, "--heldout-tokens", 0,
                                "--samples-per-prompt", 1, "--max-new-tokens", 8, "--temperature", 0, "--out", out)
    assert code == 0, err
    samples = json.loads(out.read_text())["samples"]
    assert [s["prompt_truncated"] for s in samples] == [False, True, False]
    assert all(s["n_tokens"] >= 1 for s in samples)


@pytest.mark.parametrize("content, needle", [
    (b'{"prompt": "fn a() {"}\nnot json\n', ":2: not valid JSON"),
    (b'{"prompt": 3}\n', ':1: expected an object with a string "prompt"'),
    (b"\n\n", "no prompts in the file"),
    (b'{"prompt": "caf\xe9"}\n', "not UTF-8 text"),
], ids=["bad-json", "not-a-string", "empty-file", "latin-1"])
def test_broken_prompt_file_is_one_clear_line(engram, tmp_path, content, needle):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    code, out, err = spec.run_cli("nanoeval", "score", "--ckpt", engram, "--prompts", path, "--heldout-tokens", 0)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"nanoeval: error: --prompts {path}") and needle in err
