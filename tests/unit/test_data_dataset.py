"""`Dataset` opens a built folder and refuses missing or corrupt ones with a one-line UserError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nanotrain.data.shards import Dataset
from nanotrain.errors import UserError


@pytest.fixture
def copy(tmp_path, fixture_dataset):
    dst = tmp_path / "ds"
    shutil.copytree(fixture_dataset, dst)
    return dst


def test_opens_a_built_dataset(fixture_dataset):
    ds = Dataset(fixture_dataset)
    assert ds.vocab_size == ds.tokenizer.get_vocab_size() == 512
    for split in ("train", "val", "test"):
        toks = ds.tokens(split)
        assert toks.dtype == np.uint16 and len(toks) == ds.meta["splits"][split]["tokens"]
        assert ds.bytes_per_token(split) > 1.0


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Dataset(tmp_path / "nope")


@pytest.mark.parametrize("name", ["train.bin", "val.bin", "meta.json", "tokenizer.json"])
def test_missing_file(copy, name):
    (copy / name).unlink()
    with pytest.raises(UserError, match=name):
        Dataset(copy)


def test_truncated_bin(copy):
    data = (copy / "train.bin").read_bytes()
    (copy / "train.bin").write_bytes(data[:-2])
    with pytest.raises(UserError, match="train.bin"):
        Dataset(copy)


def test_corrupt_meta(copy):
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="meta.json"):
        Dataset(copy)
    (copy / "meta.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UserError, match="schema_version"):
        Dataset(copy)


def test_vocab_mismatch(copy):
    meta = json.loads((copy / "meta.json").read_text())
    meta["vocab_size"] = 4096
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="vocab"):
        Dataset(copy)


def test_corrupt_tokenizer(copy):
    (copy / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(UserError, match="tokenizer.json"):
        Dataset(copy)


def test_unknown_split(fixture_dataset):
    with pytest.raises(UserError, match="split"):
        Dataset(fixture_dataset).tokens("dev")
