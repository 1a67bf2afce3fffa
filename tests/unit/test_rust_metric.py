"""The rust_syntax `evaluate` metric loads offline by path and gives the same numbers as nanoeval.rust."""

from pathlib import Path

import pytest

import nanoeval
from nanoeval.rust import aggregate, score_batch

METRIC_DIR = Path(nanoeval.__file__).resolve().parent / "metrics" / "rust_syntax"


def test_metric_loads_offline_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_DIR))
    preds = ["fn main() {}\n", "fn main( {", "struct P { x: f6"]
    flags = [False, False, True]
    got = metric.compute(predictions=preds, truncated=flags)
    assert got == pytest.approx(aggregate(score_batch(preds, flags)))
    assert got["n"] == 3 and got["valid_rate"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=preds)["valid_rate"] == pytest.approx(1 / 3)


def test_metric_validator_both_reports_agreement(tmp_path, monkeypatch, rustc):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_DIR))
    # valid for both; invalid for both; `~` inside a macro call: only rustc accepts it (tokens are not parsed)
    preds = ["fn main() {}\n", "fn main( {", "fn f() { m!(~x); }\n"]
    got = metric.compute(predictions=preds, validator="both", rustc=rustc.path)
    assert got["valid_rate"] == got["valid_rate_tree_sitter"] == pytest.approx(1 / 3)
    assert got["valid_rate_rustc"] == pytest.approx(2 / 3)
    assert got["validator_agreement"] == pytest.approx(2 / 3) and got["validator_disagreements"] == [2]
    only = metric.compute(predictions=preds, validator="rustc", rustc=rustc.path)
    assert only["valid_rate"] == pytest.approx(2 / 3) and only["validator_agreement"] is None
