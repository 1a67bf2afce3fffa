"""Held-out CE / bpb / ppl / entropy against a direct computation on the same windows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nanoeval
from nanoeval.heldout import evaluate_heldout
from nanotrain.cli import main
from nanotrain.data.shards import Dataset
from nanotrain.errors import UserError

FIXTURE_RUST = Path(__file__).parents[1] / "fixtures" / "rust"


@pytest.fixture(scope="module")
def dataset(fixture_dataset):
    return Dataset(fixture_dataset)


def direct_ce(model, tokens, seq_len, n_windows, bypass=False):
    """CE and entropy over the first n_windows non-overlapping windows, computed independently."""
    x = torch.as_tensor(tokens[: n_windows * seq_len + 1].astype("int64"))
    inputs = torch.stack([x[i * seq_len : (i + 1) * seq_len] for i in range(n_windows)])
    targets = torch.stack([x[i * seq_len + 1 : (i + 1) * seq_len + 1] for i in range(n_windows)])
    with torch.no_grad():
        logits = model(inputs, bypass_noncausal=bypass).logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()
    p = logits.softmax(-1)
    entropy = -(p * logits.log_softmax(-1)).sum(-1).mean().item()
    return ce, entropy


def test_matches_direct_computation(tiny_checkpoint_factory, dataset):
    loaded = nanoeval.load(tiny_checkpoint_factory("engram-v1"))
    r = evaluate_heldout(loaded.model, dataset, split="val", seq_len=32, batch_size=4, max_tokens=32 * 8)
    ce, entropy = direct_ce(loaded.model, dataset.tokens("val"), 32, 8)
    assert r.n_tokens == 32 * 8 and r.seq_len == 32
    assert r.ce == pytest.approx(ce, rel=1e-5)
    assert r.entropy == pytest.approx(entropy, rel=1e-5)
    assert r.bpb == pytest.approx(r.ce / math.log(2) / dataset.bytes_per_token("val"))
    assert r.ppl == pytest.approx(math.exp(r.ce))
    assert 0 < r.ce < 2 * math.log(loaded.model_cfg.vocab_size)
    assert r.inference_mode == "causal" and r.train_mode_ce is None


def test_token_budget_and_default_window(tiny_checkpoint_factory, dataset):
    loaded = nanoeval.load(tiny_checkpoint_factory("baseline-v1"))
    small = evaluate_heldout(loaded.model, dataset, max_tokens=300)
    assert small.seq_len == loaded.model_cfg.max_seq_len
    assert small.n_tokens <= 300
    full = evaluate_heldout(loaded.model, dataset)
    assert full.n_tokens > small.n_tokens
    assert full.n_tokens <= len(dataset.tokens("val")) - 1


def test_noncausal_model_measured_on_the_bypass_path(tiny_checkpoint_factory, dataset):
    loaded = nanoeval.load(tiny_checkpoint_factory("haar-v5"))
    with pytest.raises(UserError, match="inference-mode bypass"):
        evaluate_heldout(loaded.model, dataset, max_tokens=256)
    r = evaluate_heldout(loaded.model, dataset, seq_len=32, batch_size=2, max_tokens=64, inference_mode="bypass")
    bypass_ce, _ = direct_ce(loaded.model, dataset.tokens("val"), 32, 2, bypass=True)
    train_ce, _ = direct_ce(loaded.model, dataset.tokens("val"), 32, 2, bypass=False)
    assert r.inference_mode == "bypass"
    assert r.ce == pytest.approx(bypass_ce, rel=1e-5)
    assert r.train_mode_ce == pytest.approx(train_ce, rel=1e-5)
    assert r.train_mode_gap == pytest.approx(r.ce - r.train_mode_ce)
    assert r.train_mode_ce != r.ce


def test_empty_split_is_a_user_error(tiny_checkpoint_factory, tmp_path):
    out = tmp_path / "no-val"
    assert main(["data", "build", "--src", str(FIXTURE_RUST), "--out", str(out), "--vocab", "512",
                 "--split", "100/0/0", "--workers", "1"]) == 0
    loaded = nanoeval.load(tiny_checkpoint_factory("engram-v1"))
    with pytest.raises(UserError, match="val split"):
        evaluate_heldout(loaded.model, Dataset(out))
    with pytest.raises(UserError, match="heldout-tokens"):
        evaluate_heldout(loaded.model, Dataset(out), split="train", max_tokens=0)


def test_documents_and_their_interval(tiny_checkpoint_factory, dataset):
    import numpy as np

    from nanotrain.data.tokenizer import EOS_ID

    loaded = nanoeval.load(tiny_checkpoint_factory("engram-v1"))
    r = evaluate_heldout(loaded.model, dataset, seq_len=32, batch_size=3)
    measured = np.asarray(dataset.tokens("val")[: r.n_tokens + 1])
    # One entry per document the predicted tokens touch: an <eos> among the inputs starts the next one.
    assert r.n_docs == len(r.doc_tokens) == 1 + int((measured[1:-1] == EOS_ID).sum()) > 1
    assert sum(r.doc_tokens) == r.n_tokens
    assert sum(r.doc_nll) / r.n_tokens == pytest.approx(r.ce, rel=1e-5)
    lo, hi = r.ce_ci
    assert lo <= r.ce <= hi and lo < hi
    assert r.bpb_ci[0] == pytest.approx(lo / math.log(2) / dataset.bytes_per_token("val"))
    again = evaluate_heldout(loaded.model, dataset, seq_len=32, batch_size=5)
    assert again.ce_ci == r.ce_ci and again.tokens_sha256 == r.tokens_sha256  # seeded, batch-independent


def test_score_default_measures_the_trainers_validation_tokens(tiny_checkpoint_factory, fixture_dataset, tmp_path):
    """A checkpoint has one val CE: `nanoeval score` by default measures the windows its validation measured."""
    import json

    from nanoeval.cli import main as nanoeval_main

    ckpt = tiny_checkpoint_factory("baseline-v1")
    out = tmp_path / "score.json"
    assert nanoeval_main(["score", "--ckpt", str(ckpt), "--data", str(fixture_dataset), "--out", str(out),
                             "--prompts", "seed", "--samples-per-prompt", "1", "--max-new-tokens", "2"]) == 0
    h = json.loads(out.read_text())["heldout"]
    trained = json.loads((ckpt / "config.json").read_text())["train"]
    val = [json.loads(line) for line in (ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    last_val = [row for row in val if row.get("kind") == "val"][-1]
    assert h["seq_len"] == trained["seq_len"]
    assert h["n_tokens"] == last_val["val_tokens"]
    assert h["ce"] == pytest.approx(last_val["val_ce"], abs=1e-4)
