"""The rust_syntax `evaluate` metric loads offline by path and gives the same numbers as nanoeval.rust."""

from pathlib import Path

import pytest

import nanoeval
from nanoeval.rust import aggregate, score_batch

METRIC_DIR = Path(nanoeval.__file__).resolve().parent / "metrics" / "rust_syntax"


@pytest.fixture
def metric(tmp_path, monkeypatch):
    """The metric module loaded by path with the Hugging Face hubs offline and an empty cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_DIR))
    return metric


def test_metric_loads_offline_and_matches(metric):
    preds = ["fn main() {}\n", "fn main( {", "struct P { x: f6"]
    flags = [False, False, True]
    got = metric.compute(predictions=preds, truncated=flags)
    assert got == pytest.approx(aggregate(score_batch(preds, flags)))
    assert got["n"] == 3 and got["valid_rate"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=preds)["valid_rate"] == pytest.approx(1 / 3)


def test_metric_validator_both_reports_agreement(metric, rustc):
    # valid for both; invalid for both; `~` inside a macro call: only rustc accepts it (tokens are not parsed)
    preds = ["fn main() {}\n", "fn main( {", "fn f() { m!(~x); }\n"]
    got = metric.compute(predictions=preds, validator="both", rustc=rustc.path)
    assert got["valid_rate"] == got["valid_rate_tree_sitter"] == pytest.approx(1 / 3)
    assert got["valid_rate_rustc"] == pytest.approx(2 / 3)
    assert got["validator_agreement"] == pytest.approx(2 / 3) and got["validator_disagreements"] == [2]
    only = metric.compute(predictions=preds, validator="rustc", rustc=rustc.path)
    assert only["valid_rate"] == pytest.approx(2 / 3) and only["validator_agreement"] is None


def test_metric_card_describes_inputs_outputs_example_and_cites_tree_sitter_rust(metric):
    assert "tree-sitter-rust" in metric.description and "valid_rate" in metric.description
    assert "github.com/tree-sitter/tree-sitter-rust" in metric.citation and "@software" in metric.citation
    for field in ("predictions", "truncated", "validator", "n:", "error_density", "Examples:"):
        assert field in metric.inputs_description, field
    # the card's example gives what it says it gives
    assert metric.compute(predictions=["fn main() {}\n", "fn main( {"], truncated=[False, False])["valid_rate"] == 0.5
    assert metric.compute(predictions=["struct P { x: f6"], truncated=[True])["valid_rate"] == 1.0
    empty = metric.compute(predictions=[])
    assert empty["n"] == 0 and empty["valid_rate"] is None
    card = (METRIC_DIR / "README.md").read_text()
    for section in ("## Metric Description", "### Inputs", "### Output Values", "### Examples", "## Citation",
                    "## Limitations and Bias"):
        assert section in card, section
    assert metric.citation.split("\n")[0] in card
