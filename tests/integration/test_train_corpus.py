"""A small Rust corpus generated for the trainer tests, built into a real dataset folder by the data builder.

The files are generated (deterministic, seeded) so the tests need nothing outside the repository; the dataset
goes through `nanotrain.data.shards.build_dataset` like a user's would. Other trainer test modules import
`build_fixture_dataset` from here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

FIXTURE_VOCAB = 512

_TYPES = ["u8", "u16", "u32", "u64", "i32", "i64", "usize", "f32", "f64", "bool"]
_WORDS = ["count", "total", "index", "value", "buffer", "offset", "length", "state", "node", "item", "key",
          "cache", "limit", "score", "weight", "parent", "child", "width", "height", "depth", "cursor"]


def _ident(rng: random.Random, n: int = 2) -> str:
    return "_".join(rng.choice(_WORDS) for _ in range(n))


def _camel(rng: random.Random) -> str:
    return "".join(w.capitalize() for w in rng.sample(_WORDS, 2))


def rust_file(rng: random.Random) -> str:
    """One syntactically valid Rust file: a struct, an impl with a few methods, a free function and a test."""
    name = _camel(rng)
    fields = [(_ident(rng, 1) + str(i), rng.choice(_TYPES)) for i in range(rng.randint(2, 5))]
    lines = [f"/// {name} keeps track of {rng.choice(_WORDS)} values.", "#[derive(Debug, Clone, PartialEq)]",
             f"pub struct {name} {{"]
    lines += [f"    pub {f}: {t}," for f, t in fields]
    lines += ["}", "", f"impl {name} {{", "    pub fn new() -> Self {", "        Self {"]
    zero = {"bool": "false", "f32": "0.0", "f64": "0.0"}
    lines += [f"            {f}: {zero.get(t, '0')}," for f, t in fields]
    lines += ["        }", "    }"]
    for _ in range(rng.randint(1, 3)):
        f, t = rng.choice(fields)
        method = _ident(rng)
        if t == "bool":
            body = [f"        self.{f} = !self.{f};", f"        self.{f}"]
            ret = "bool"
        elif t.startswith("f"):
            body = [f"        let scale = {rng.randint(1, 9)}.0;", f"        self.{f} = self.{f} * scale + 1.0;",
                    f"        self.{f}"]
            ret = t
        else:
            k = rng.randint(1, 7)
            body = [f"        for i in 0..{k} {{", "            if i % 2 == 0 {",
                    f"                self.{f} = self.{f}.wrapping_add(i as {t});", "            }", "        }",
                    f"        self.{f}"]
            ret = t
        lines += ["", f"    pub fn {method}(&mut self) -> {ret} {{", *body, "    }"]
    lines += ["}", ""]
    fn = _ident(rng)
    lines += [f"pub fn {fn}(items: &[u32]) -> u32 {{", "    let mut acc = 0u32;", "    for x in items {",
              "        match x % 3 {", "            0 => acc += x,", "            1 => acc = acc.saturating_sub(1),",
              "            _ => {}", "        }", "    }", "    acc", "}", "",
              "#[cfg(test)]", "mod tests {", "    use super::*;", "", "    #[test]", f"    fn test_{fn}() {{",
              f"        assert_eq!({fn}(&[3, 6, 9]), 18);", f"        let v = {name}::new();",
              "        assert_eq!(v.clone(), v);", "    }", "}", ""]
    return "\n".join(lines)


def write_corpus(root: Path, n_files: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for i in range(n_files):
        d = root / f"crate_{i % 8}" / "src"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"module_{i}.rs").write_text(rust_file(rng))
    return root


def build_fixture_dataset(root: Path, vocab_size: int = FIXTURE_VOCAB) -> Path:
    """Generate the corpus under `root/src` and build a dataset at `root/data`; returns the dataset folder."""
    from nanotrain.data.shards import build_dataset

    src = write_corpus(root / "src")
    out = root / "data"
    build_dataset([src], out, vocab_size=vocab_size, split="80/10/10", parse_filter=False, workers=1,
                  progress=False)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two that wait on
    each other while other processes hold the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixture_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixture_dataset(tmp_path_factory.mktemp("train_corpus"))


def test_fixture_dataset_builds_and_round_trips(fixture_dataset: Path) -> None:
    from nanotrain.data.shards import Dataset

    ds = Dataset(fixture_dataset)
    assert ds.vocab_size == FIXTURE_VOCAB
    for split in ("train", "val"):
        assert len(ds.tokens(split)) > 2000, split
    text = ds.tokenizer.decode(ds.tokens("val")[:400].tolist())
    assert "pub fn" in text and "\n" in text
