"""rust_syntax: tree-sitter validity, error density, bracket balance and distinct-3 of generated Rust, as an
`evaluate` metric. The scoring is `nanoeval.rust` (installed with nanolab); this module only wraps it."""

import datasets
import evaluate

from nanoeval.rust import aggregate
from nanoeval.rust import score_batch

_DESCRIPTION = """Scores Rust text with tree-sitter-rust: valid_rate (no ERROR/MISSING nodes; for samples cut at a
token limit, only errors at the cut are allowed), error_density (ERROR+MISSING nodes per KB), bracket_balance
((), [], {} outside strings and comments; 1.0 when all match) and distinct_3 (distinct token trigrams)."""

_INPUTS = """
Args:
    predictions: list of Rust source strings.
    truncated: optional list of bools, one per prediction (True = cut at the token limit); default all False.
Returns:
    dict with n, valid_rate, bracket_balance, error_density, distinct_3 (means over predictions).
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

    def _compute(self, predictions, truncated=None):
        flags = [False] * len(predictions) if truncated is None else [bool(t) for t in truncated]
        return aggregate(score_batch(list(predictions), flags))
