"""rust_syntax: tree-sitter validity, error density, bracket balance and distinct-3 of generated Rust, as an
`evaluate` metric. The scoring is `nanoeval.rust` (installed with nanolab); this module only wraps it."""

import datasets
import evaluate

from nanoeval.rust import aggregate
from nanoeval.rust import score_batch
from nanoeval.rustc import check_texts
from nanoeval.rustc import find_rustc
from nanoeval.rustc import validity_summary

_DESCRIPTION = """Scores Rust text with tree-sitter-rust: valid_rate (no errors; for samples cut at a token limit,
only errors at the cut are allowed; validator="rustc" or "both" asks rustc's parser too), error_density (errors
per KB), bracket_balance ((), [], {} outside strings and comments; 1.0 when all match) and distinct_3 (distinct
token trigrams)."""

_INPUTS = """
Args:
    predictions: list of Rust source strings.
    truncated: optional list of bools, one per prediction (True = cut at the token limit); default all False.
    validator: "tree-sitter" (default), "rustc" (the compiler's parser, `rustc -Z parse-crate-root-only`) or
        "both".
    rustc: path of the rustc to use (default: $NANOLAB_RUSTC, else /usr/bin/rustc if >= 1.80, else PATH).
Returns:
    dict with n, valid_rate, bracket_balance, error_density, distinct_3 (means over predictions); valid_rate is
    the validator's (both: tree-sitter's). With rustc or both also validator, valid_rate_tree_sitter,
    valid_rate_rustc, validator_agreement and validator_disagreements (indices of predictions; both only).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class RustSyntax(evaluate.Metric):
    """Tree-sitter based scoring of Rust samples."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
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
