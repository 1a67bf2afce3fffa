"""Seed coherence metrics (docs/original-runs.md, "Evaluation") on hand-made samples with hand-computed values."""

import pytest

from nanoeval.seed_metrics import (
    aggregate_seed,
    bracket_count_ratio,
    keyword_ratio,
    repetition,
    score,
    syntactic_coherence,
    token_quality,
)


def test_bracket_count_ratio_counts_angles_and_arrows():
    assert bracket_count_ratio("no brackets") == 1.0
    # O = ( { = 2; C = ) and the > of -> = 2: "balanced" although the { is never closed
    assert bracket_count_ratio("fn f() -> u8 {") == 1.0
    # O = ( { = 2; C = > = 1 -> 1 - 1/3
    assert bracket_count_ratio("( -> {") == pytest.approx(2 / 3)
    assert bracket_count_ratio("((((") == 0.0
    assert bracket_count_ratio("a < b") == 0.0


def test_repetition_threshold_and_value():
    assert repetition("a b c", 3) == 1.0  # fewer than n+1 words
    assert repetition("a b c a b c", 3) == pytest.approx(3 / 4)  # abc bca cab abc
    assert repetition("x x x x x x", 5) == pytest.approx(1 / 2)


def test_keyword_ratio():
    # W = {pub, fn, foo, let, x} -> 3 keywords / min(5, 50)
    assert keyword_ratio("pub fn foo() { let x = x; }") == pytest.approx(3 / 5)
    assert keyword_ratio("") == 0.0
    words = " ".join(f"w{i}" for i in range(60)) + " fn"
    assert keyword_ratio(words) == pytest.approx(1 / 50)


def test_token_quality():
    # identifiers: ok, a_b_c_d_e_f (5 underscores), fooBARX (camel run), short
    assert token_quality("ok a_b_c_d_e_f fooBARX short") == pytest.approx(1 - 2 / 4)
    assert token_quality("x" * 26 + " y") == pytest.approx(1 / 2)
    assert token_quality("123 + 456") == 1.0


def test_syntactic_coherence_checks():
    full = 'fn main() { let mut x: u8 = 1; impl Foo {} struct P { a: u8 } x.len(); let s = "hi"; }'
    assert syntactic_coherence(full) == 1.0
    assert syntactic_coherence("hello world") == 0.0
    assert syntactic_coherence("use std::io; use std::fmt;") == pytest.approx(1 / 8)  # only the two ';'


def test_composite_and_aggregate():
    text = "fn main() { }"
    s = score(text)
    # brackets: O=2 C=2 -> 1; rep: 4 words < 5 -> 1, 1; keywords {fn, main}: 1/2; tokens 1
    # syntax: fn main( only -> 1/8
    assert (s["brackets"], s["rep3"], s["rep5"], s["keywords"], s["tokens"]) == (1.0, 1.0, 1.0, 0.5, 1.0)
    assert s["syntax"] == pytest.approx(1 / 8)
    assert s["composite"] == pytest.approx(0.15 * 4.5 + 0.25 / 8)
    agg = aggregate_seed([text, "", "[TIMEOUT/ERROR]"])
    assert agg["n"] == 1 and agg["composite"] == pytest.approx(s["composite"])
    assert aggregate_seed([])["n"] == 0
