"""rust_syntax: tree-sitter validity, error density, bracket balance and distinct-3 of generated Rust, as an
`evaluate` metric. The scoring is `nanoeval.rust` (installed with nanolab); this module only wraps it."""

import datasets
import evaluate

from nanoeval.rust import aggregate, score_batch
from nanoeval.rustc import check_texts, find_rustc, validity_summary

_DESCRIPTION = """Syntactic quality of generated Rust, measured with the tree-sitter-rust grammar: the share of
samples that parse without errors (valid_rate; for samples cut at a token limit only errors at the cut are
allowed; validator="rustc" or "both" also asks the Rust compiler's own parser), errors per KB of text
(error_density), bracket balance over (), [] and {} outside strings and comments (bracket_balance), and the share of
distinct token trigrams (distinct_3, a repetition measure). It is the scoring of `nanoeval score` and
`nanoeval check-rust` (nanolab's `nanoeval.rust`)."""

_CITATION = """@software{tree_sitter_rust,
  author = {Max Brunsfeld and the tree-sitter contributors},
  title = {tree-sitter-rust: Rust grammar for tree-sitter},
  url = {https://github.com/tree-sitter/tree-sitter-rust},
  license = {MIT}
}
@software{tree_sitter,
  author = {Max Brunsfeld and the tree-sitter contributors},
  title = {Tree-sitter: an incremental parsing system for programming tools},
  url = {https://github.com/tree-sitter/tree-sitter},
  license = {MIT}
}"""

_INPUTS = """
Args:
    predictions: list of Rust source strings.
    truncated: optional list of bools, one per prediction (True = cut at the token limit); default all False.
    validator: "tree-sitter" (default), "rustc" (the compiler's parser, `rustc -Z parse-crate-root-only`) or
        "both".
    rustc: path of the rustc to use (default: $NANOLAB_RUSTC, else /usr/bin/rustc if >= 1.80, else PATH).
Returns:
    n: number of predictions.
    valid_rate: share of predictions without syntax errors (the validator's; both: tree-sitter's), in [0, 1].
    bracket_balance: mean over predictions of matched pairs / (pairs + problems), in [0, 1].
    error_density: mean syntax errors per KB of UTF-8 text (>= 0).
    distinct_3: mean share of distinct token trigrams, in [0, 1].
    With validator "rustc" or "both" also: validator, valid_rate_tree_sitter, valid_rate_rustc,
    validator_agreement and validator_disagreements (indices of predictions; both only).
Examples:
    >>> import evaluate
    >>> rust_syntax = evaluate.load("path/to/nanoeval/metrics/rust_syntax")
    >>> results = rust_syntax.compute(predictions=["fn main() {}\\n", "fn main( {"], truncated=[False, False])
    >>> results["n"], results["valid_rate"]
    (2, 0.5)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class RustSyntax(evaluate.Metric):
    """Tree-sitter based scoring of Rust samples."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            homepage="https://github.com/tree-sitter/tree-sitter-rust",
            codebase_urls=["https://github.com/tree-sitter/tree-sitter-rust",
                           "https://github.com/tree-sitter/py-tree-sitter"],
            reference_urls=["https://tree-sitter.github.io/tree-sitter/"],
            license="MIT",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, truncated=None, validator="tree-sitter", rustc=None):
        flags = [False] * len(predictions) if truncated is None else [bool(t) for t in truncated]
        scores = score_batch(list(predictions), flags)
        out = aggregate(scores)
        if validator == "tree-sitter":
            return out
        rustc_valid = [v.valid for v in check_texts(list(predictions), flags, find_rustc(rustc))]
        summary = validity_summary(validator, None if validator == "rustc" else [s.valid for s in scores],
                                   rustc_valid)
        if validator == "rustc" and out["n"]:
            out["valid_rate"] = summary["valid_rate_rustc"]
        return {**out, **summary}
