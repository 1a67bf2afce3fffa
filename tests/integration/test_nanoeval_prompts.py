"""Prompt sets: the seed's 15 with real newlines, signatures cut from the test split, user JSONL files."""

from __future__ import annotations

import pytest

from nanoeval.prompts import SEED_PROMPTS, completion_prompts, load_prompt_file, resolve_prompts
from nanotrain.data.shards import Dataset
from nanotrain.errors import UserError


def test_seed_prompts_have_real_newlines():
    assert len(SEED_PROMPTS) == 15 and len(set(SEED_PROMPTS)) == 15
    assert not any("\\n" in p for p in SEED_PROMPTS)
    assert sum("\n" in p for p in SEED_PROMPTS) == 7
    assert resolve_prompts("seed") == list(SEED_PROMPTS)


def test_completion_prompts_are_signatures_from_the_test_split(fixture_dataset):
    import tree_sitter
    import tree_sitter_rust

    dataset = Dataset(fixture_dataset)
    prompts = completion_prompts(dataset, n=4, per_file=2)
    assert prompts == completion_prompts(dataset, n=4, per_file=2)  # deterministic
    assert 1 <= len(prompts) <= 4
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_rust.language()))
    test_text = dataset.tokenizer.decode(dataset.tokens("test").tolist())
    for p in prompts:
        assert p.endswith("{") and "fn " in p
        assert p in test_text
        # completing the body with "}" gives a parseable function item
        tree = parser.parse((p + "}").encode())
        assert not tree.root_node.has_error, p


def test_prompt_file(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "fn a() {"}\n\n{"prompt": "", "id": 3}\n')
    assert load_prompt_file(good) == ["fn a() {", ""]
    cases = {
        "bad.jsonl": ('{"prompt": "x"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
        "key.jsonl": ('{"text": "x"}\n', 'key.jsonl:1: expected an object with a string "prompt"'),
        "empty.jsonl": ("\n\n", "no prompts"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match=message):
            load_prompt_file(tmp_path / name)
    with pytest.raises(UserError, match="file not found"):
        resolve_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="needs a dataset"):
        resolve_prompts("completions")
