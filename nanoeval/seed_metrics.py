"""The seed's heuristic "coherence" metrics (`scripts/score_coherence.py`), as docs/original-runs.md ("Evaluation")
describes.

Behind `--metrics seed`, to reproduce the seed's recorded scores; nanolab's own scoring is `nanoeval.rust`.
Where §10.2 leaves an empty-input case open, the choice is noted on the function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

KEYWORDS = frozenset(
    "fn let mut pub struct impl enum trait match if else for while loop return use mod crate self Self where type "
    "async await unsafe const static ref Ok Err Some None Result Option Vec String str bool usize i32 u8 f32".split()
)

_WORD = re.compile(r"\b\w+\b")
_IDENT = re.compile(r"\b[a-zA-Z_]\w*\b")
_CAMEL_RUN = re.compile(r"^[a-z]+[A-Z]{3,}")

SYNTAX_CHECKS: tuple[re.Pattern, ...] = (
    re.compile(r"\bfn\s+\w+\s*[(<]"),  # fn name( / fn name<
    re.compile(r"\blet\s+(?:mut\s+)?\w+\s*[=:]"),  # let [mut] x = / :
    re.compile(r"\bstruct\s+\w+\s*[{<(]"),  # struct X { / < / (
    re.compile(r"\bimpl\s*(?:<[^>]*>\s*)?\w+"),  # impl [<...>] X
    re.compile(r"\b\w+\s*:(?!:)\s*&?(?:mut\s+)?[A-Za-z_]\w*"),  # a type annotation `x: T` (not a `::` path)
    re.compile(r"\.\w+\s*\("),  # a method call .x(
    re.compile(r";[^;]*;"),  # at least two ';'
    re.compile(r'"[^"\n]*"'),  # a string literal
)


def bracket_count_ratio(text: str) -> float:
    """1 − min(|O−C|/(O+C), 1) over the counts of ( [ { < and ) ] } >; 1.0 without brackets. No matching."""
    opens = sum(text.count(c) for c in "([{<")
    closes = sum(text.count(c) for c in ")]}>")
    if opens + closes == 0:
        return 1.0
    return 1.0 - min(abs(opens - closes) / (opens + closes), 1.0)


def repetition(text: str, n: int) -> float:
    """Unique / all n-grams of whitespace words; 1.0 with fewer than n+1 words (the seed's threshold)."""
    words = text.split()
    if len(words) < n + 1:
        return 1.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams)


def keyword_ratio(text: str) -> float:
    """|W ∩ K| / min(|W|, 50) with W the set of `\\b\\w+\\b` tokens; 0.0 for text without words."""
    words = set(_WORD.findall(text))
    if not words:
        return 0.0
    return len(words & KEYWORDS) / min(len(words), 50)


def token_quality(text: str) -> float:
    """1 − invented/total identifiers; invented = longer than 25, `^[a-z]+[A-Z]{3,}`, or more than 4 underscores.
    1.0 for text without identifiers."""
    idents = _IDENT.findall(text)
    if not idents:
        return 1.0
    invented = sum(len(t) > 25 or bool(_CAMEL_RUN.match(t)) or t.count("_") > 4 for t in idents)
    return 1.0 - invented / len(idents)


def syntactic_coherence(text: str) -> float:
    """Fraction of the 8 regex checks in `SYNTAX_CHECKS` that find a match."""
    return sum(bool(p.search(text)) for p in SYNTAX_CHECKS) / len(SYNTAX_CHECKS)


def score(text: str) -> dict[str, float]:
    """All §10.2 metrics of one sample, and composite = 0.15·(brackets+rep3+rep5+keywords+tokens) + 0.25·syntax."""
    s = {
        "brackets": bracket_count_ratio(text),
        "rep3": repetition(text, 3),
        "rep5": repetition(text, 5),
        "keywords": keyword_ratio(text),
        "tokens": token_quality(text),
        "syntax": syntactic_coherence(text),
    }
    s["composite"] = 0.15 * (s["brackets"] + s["rep3"] + s["rep5"] + s["keywords"] + s["tokens"]) + 0.25 * s["syntax"]
    return s


def aggregate_seed(texts: Sequence[str]) -> dict[str, float | int | None]:
    """Mean of each metric over samples, skipping empty ones and "[TIMEOUT/ERROR]" as the seed did; plus `n`."""
    kept = [t for t in texts if t.strip() and t.strip() != "[TIMEOUT/ERROR]"]
    keys = ("composite", "syntax", "rep3", "rep5", "brackets", "keywords", "tokens")
    if not kept:
        return {"n": 0, **{k: None for k in keys}}
    rows = [score(t) for t in kept]
    return {"n": len(rows), **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
