"""Prompt sets for generation: the seed's 15, function signatures cut from held-out files, or a JSONL file.

`seed`: the original's 15 coherence prompts (docs/original-runs.md, "Evaluation"). Its bash double quotes left "\\n" as
a literal backslash-n; here they are real newlines, which is what the prompts mean.
`seed+completions` (the default of `nanoeval score`): both, seed first.
`completions`: signatures of `fn` items found with tree-sitter in the dataset's test split (files separated by
`<eos>`), cut just after the opening `{` of the body, so the model writes the body. Deterministic.
A file: one JSON object per line with a string "prompt" (blank lines are skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

from nanotrain.errors import UserError

SEED_PROMPTS: tuple[str, ...] = (
    "fn main() {",
    "pub struct Config {",
    "use std::collections::HashMap;\n\nfn ",
    "impl Iterator for ",
    "pub fn parse(input: &str) -> Result<",
    "#[derive(Debug, Clone)]\npub struct ",
    "async fn handle_request(req: Request) -> Response {",
    "impl Display for Error {\n    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {",
    "pub trait ",
    "match self {",
    "#[test]\nfn test_",
    "let mut result = Vec::new();\n    for ",
    "fn from_str(s: &str) -> Result<Self, Self::Err> {",
    "/// Returns the number of elements in the collection.\npub fn len(&self) -> usize {",
    "use serde::{Deserialize, Serialize};\n\n#[derive(Debug, Serialize, Deserialize)]\npub struct ",
)

MAX_SIGNATURE_CHARS = 400  # longer signatures (huge where-clauses) are skipped: they crowd the context
MAX_SIGNATURES_PER_FILE = 64  # signatures read from one file (the later ones are used only when files run short)


def completion_prompts(dataset, n: int = 30, per_file: int = 2, split: str = "test") -> list[str]:
    """Up to `n` function signatures (text up to and including the body's `{`) from `split`, in file order,
    at most `per_file` from each file so the set spans many files; a split with too few files for `n` gives
    more per file (in rounds of `per_file` over its files)."""
    import numpy as np
    import tree_sitter
    import tree_sitter_rust

    from nanotrain.data.tokenizer import EOS_ID

    if n < 1:
        raise UserError(f"--n-prompts {n}: must be at least 1")
    tokens = np.asarray(dataset.tokens(split))
    if len(tokens) == 0:
        raise UserError(f"{dataset.folder}: the {split} split is empty; no completion prompts to cut")
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_rust.language()))
    ends = np.flatnonzero(tokens == EOS_ID)
    starts = np.concatenate(([0], ends + 1))
    out: list[str] = []
    rest: list[list[str]] = []  # each file's signatures beyond the first `per_file`
    for start, end in zip(starts, np.concatenate((ends, [len(tokens)]))):
        if end <= start:
            continue
        text = dataset.tokenizer.decode(tokens[start:end].tolist(), skip_special_tokens=True)
        found = _signatures(parser, text.encode("utf-8"), MAX_SIGNATURES_PER_FILE)
        out.extend(found[:per_file])
        rest.append(found[per_file:])
        if len(out) >= n:
            return out[:n]
    while len(out) < n and any(rest):
        for i, more in enumerate(rest):
            out.extend(more[:per_file])
            rest[i] = more[per_file:]
    if not out:
        raise UserError(f"{dataset.folder}: no `fn` items found in the {split} split")
    return out[:n]


def _signatures(parser, code: bytes, limit: int) -> list[str]:
    """Text of `fn` items with a body, from the item start through the body's `{`, in source order."""
    found: list[str] = []
    stack = [parser.parse(code).root_node]
    while stack and len(found) < limit:
        node = stack.pop()
        if node.type == "function_item":
            body = node.child_by_field_name("body")
            if body is not None and not node.has_error:
                sig = code[node.start_byte : body.start_byte + 1].decode("utf-8", errors="replace")
                if len(sig) <= MAX_SIGNATURE_CHARS:
                    found.append(sig)
            continue
        stack.extend(reversed(node.children))
    return found


def load_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a JSONL file: {"prompt": "..."} per line. UserError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts {path}: file not found (or use 'seed' / 'completions')")
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--prompts {path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UserError(f'--prompts {path}:{number}: expected an object with a string "prompt"')
        prompts.append(item["prompt"])
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in the file")
    return prompts


def resolve_prompts(spec: str, dataset=None, n: int = 30) -> list[str]:
    """`seed`, `completions` (needs `dataset`), `seed+completions` (both, seed first) or a path to a JSONL prompt
    file."""
    if spec == "seed":
        return list(SEED_PROMPTS)
    if spec in ("completions", "seed+completions"):
        if dataset is None:
            raise UserError(f"--prompts {spec}: needs a dataset (--data DIR)")
        return (list(SEED_PROMPTS) if spec.startswith("seed") else []) + completion_prompts(dataset, n=n)
    return load_prompt_file(spec)
