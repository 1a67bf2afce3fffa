"""nanoeval.rust: tree-sitter validity (rule B), error listing, lexer-aware brackets, distinct-3, batch/aggregate."""

from pathlib import Path

import pytest

from nanoeval.rust import aggregate, distinct_3, lex_brackets, score_batch, score_sample
from nanotrain.errors import UserError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rust_scoring"


def read(name: str) -> str:
    return (FIX / name).read_text()


def test_valid_file_scores_clean():
    s = score_sample(read("valid_shapes.rs"), truncated=False)
    assert s.valid and s.n_errors == 0 and s.errors == [] and s.first_error_line is None
    assert s.error_density == 0.0 and s.bracket_balance == 1.0
    assert 0.5 < s.distinct_3 <= 1.0


def test_bracket_traps_are_ignored():
    text = read("bracket_traps.rs")
    s = score_sample(text, truncated=False)
    assert s.valid, s.errors
    rep = lex_brackets(text)
    assert rep.balance == 1.0 and rep.problems == 0 and rep.unterminated is None
    assert rep.pairs == _tree_sitter_openers(text)


def _tree_sitter_openers(text: str) -> int:
    """Openers that tree-sitter sees as code tokens: an oracle independent of our lexer."""
    from nanoeval.rust import _parser

    count, stack = 0, [_parser().parse(text.encode()).root_node]
    while stack:
        node = stack.pop()
        count += node.child_count == 0 and node.type in ("(", "[", "{")
        stack.extend(node.children)
    return count


@pytest.mark.parametrize(
    "name, line, kind",
    [("corrupted_let.rs", 2, "error"), ("corrupted_missing_semicolon.rs", 2, "missing"),
     ("corrupted_brackets.rs", 1, "error")],
)
def test_corrupted_files_are_invalid_with_positions(name, line, kind):
    s = score_sample(read(name), truncated=False)
    assert not s.valid and s.n_errors >= 1
    assert s.first_error_line == line
    assert s.errors[0]["kind"] == kind
    assert s.error_density == pytest.approx(s.n_errors * 1024 / s.n_bytes)


def test_error_columns_are_one_based_characters():
    s = score_sample("fn main() {\n    let é = ;\n}\n", truncated=False)
    err = s.errors[0]
    assert (err["line"], err["col"], err["kind"]) == (2, 11, "error")
    assert err["text"].startswith("=")


def test_missing_node_reported_as_missing():
    s = score_sample("struct P { x: f64, y: f6", truncated=False)
    assert not s.valid
    assert [e["kind"] for e in s.errors] == ["missing"]
    assert s.errors[0]["text"] == "}"


@pytest.mark.parametrize("name", ["truncated_in_string.rs", "truncated_mid_body.rs"])
def test_rule_b_accepts_damage_at_the_cut(name):
    text = read(name)
    assert not score_sample(text, truncated=False).valid
    s = score_sample(text, truncated=True)
    assert s.valid and s.n_errors >= 1
    assert s.bracket_balance == 1.0 and s.brackets["open_at_end"] >= 2


def test_rule_b_rejects_error_before_the_cut():
    s = score_sample(read("truncated_after_error.rs"), truncated=True)
    assert not s.valid and s.first_error_line == 2


def test_open_brackets_penalised_only_when_not_truncated():
    text = "fn f() { let v = vec![1, 2"
    assert lex_brackets(text, truncated=True).balance == 1.0
    full = lex_brackets(text, truncated=False)
    assert full.open_at_end == 2 and full.balance == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "text, pairs, unmatched_open, unmatched_close, mismatched",
    [
        ("()[]{}", 3, 0, 0, 0),
        ("{ ( }", 1, 1, 0, 0),
        ("( ]", 0, 0, 0, 1),
        (") x (", 0, 0, 1, 0),
        ("let c = '('; let d = ')'; (", 0, 0, 0, 0),
        ("x = r##\"]\"#\"##; ( )", 1, 0, 0, 0),
        ("/* ( /* ) */ [ */ {}", 1, 0, 0, 0),
    ],
)
def test_bracket_matching_counts(text, pairs, unmatched_open, unmatched_close, mismatched):
    rep = lex_brackets(text, truncated=True)
    assert (rep.pairs, rep.unmatched_open, rep.unmatched_close, rep.mismatched) == (
        pairs, unmatched_open, unmatched_close, mismatched
    )


def test_balance_formula():
    rep = lex_brackets("() () ) (", truncated=False)
    assert (rep.pairs, rep.unmatched_close, rep.open_at_end) == (2, 1, 1)
    assert rep.balance == pytest.approx(2 / 4)
    assert lex_brackets("no brackets").balance == 1.0


@pytest.mark.parametrize(
    "text, kind",
    [('let s = "abc (', "string"), ('let s = r#"abc (', "raw_string"), ("/* ( /* */ (", "block_comment")],
)
def test_unterminated_literal_reported_and_hides_brackets(text, kind):
    rep = lex_brackets(text, truncated=False)
    assert rep.unterminated == kind and rep.pairs == 0 and rep.problems == 0


def test_lifetimes_are_not_char_literals():
    rep = lex_brackets("fn f<'a, 'b: 'a>(x: &'a str, y: &'b str) -> &'a str { 'l: loop { break 'l; } }")
    assert rep.balance == 1.0 and rep.pairs == 3


def test_distinct_3():
    assert distinct_3("a b") == 1.0
    assert distinct_3("a a a a a") == pytest.approx(1 / 3)
    # tokens f ( x ) f ( x ): trigrams f(x (x) x)f )f( f(x (x) -> 4 distinct of 6
    assert distinct_3("f(x) f(x)") == pytest.approx(4 / 6)
    assert distinct_3("héllo wörld x") == 1.0


def test_batch_and_aggregate():
    texts = [read("valid_shapes.rs"), read("corrupted_let.rs"), read("truncated_mid_body.rs")]
    scores = score_batch(texts, [False, False, True])
    assert [s.valid for s in scores] == [True, False, True]
    agg = aggregate(scores)
    assert agg["n"] == 3 and agg["valid_rate"] == pytest.approx(2 / 3)
    assert agg["error_density"] == pytest.approx(sum(s.error_density for s in scores) / 3)
    assert aggregate([])["valid_rate"] is None
    with pytest.raises(UserError, match="truncated flags"):
        score_batch(texts, [False])


def test_to_dict_is_json_ready():
    import json

    d = score_sample(read("corrupted_let.rs"), truncated=False).to_dict()
    assert set(d) >= {"valid", "error_density", "errors", "first_error_line", "bracket_balance", "brackets",
                      "distinct_3"}
    json.dumps(d)


def _reference_match(brackets: str) -> tuple[int, int, int, int, int]:
    """The documented matching rule, bracket by bracket, for checking the fast path of lex_brackets."""
    close_to_open = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    pairs = unmatched_open = unmatched_close = mismatched = 0
    for ch in brackets:
        if ch in "([{":
            stack.append(ch)
        elif stack and stack[-1] == close_to_open[ch]:
            stack.pop()
            pairs += 1
        elif not stack:
            unmatched_close += 1
        elif close_to_open[ch] in stack:
            while stack[-1] != close_to_open[ch]:
                stack.pop()
                unmatched_open += 1
            stack.pop()
            pairs += 1
        else:
            stack.pop()
            mismatched += 1
    return pairs, unmatched_open, unmatched_close, mismatched, len(stack)


def test_fast_matching_equals_reference_rule():
    import random

    rng = random.Random(7)
    cases = ["(" * 100 + ")" * 100, "{" * 50 + "[" * 50 + ")" + "]" * 50 + "}" * 49]
    cases += ["".join(rng.choice("()[]{}") for _ in range(rng.randint(0, 200))) for _ in range(300)]
    cases += ["({[" * 20 + "]})" * 20 + "".join(rng.choice("()[]{}") for _ in range(20)) for _ in range(50)]
    for text in cases:
        rep = lex_brackets(text)
        got = (rep.pairs, rep.unmatched_open, rep.unmatched_close, rep.mismatched, rep.open_at_end)
        assert got == _reference_match(text), text


def test_one_line_of_garbage_is_not_excused_by_the_last_line_rule():
    garbage = "fn main() { removed calledNErt L1.1 whereSE101>(&imest #[ED,ther128()?; bit [_1direinkSelfth"
    assert not score_sample(garbage, truncated=True).valid
    # The same damage after a complete first line, cut mid-statement on the last line, is excused.
    assert score_sample("fn main() {\n    let x = foo(1, ", truncated=True).valid


def test_tokens_match_the_regex_definition():
    """`tokens` (replace + split) is a faster `_WORD.findall`: same list on every byte class, edge cases and Rust."""
    from nanoeval.rust import _WORD, tokens

    every_byte = bytes(range(256)) * 2
    cases = [b"", b" ", b"a", b"foo(x)", b"a\tb\x0bc\x0cd\re\nf", b"x\x00y\x1fz\x7f", b"\xc3\xa9t\xc3\xa9 caf\xc3\xa9!",
             b"r#\"raw\"#; 'a: loop {}", b"__init__ ::<T>", every_byte, read("valid_shapes.rs").encode()]
    for code in cases:
        assert tokens(code) == _WORD.findall(code), code[:40]
    rng = __import__("random").Random(0)
    for _ in range(200):
        code = bytes(rng.choice(b"ab_9 \t\n\x0b(){}<>;:'\"\\\x00\x7f\x80\xff") for _ in range(rng.randrange(30)))
        assert tokens(code) == _WORD.findall(code), code


@pytest.mark.parametrize("text,truncated,valid", [
    ("match self {\n    _ => 1,\n}\nfn g() {\n    g(", True, False),  # a statement where an item must stand
    ("fn f() {}\nlet", True, True),  # on the last, partial line: the cut may be to blame
    ("impl S {\n    #[inline]\n}\nfn g() {\n    g(", True, False),  # the impl body is closed before the cut
    ("fn f() {}\n#[derive(Debug)]\n", True, True),  # the item after it was cut off
    ("fn f() {}\n#[derive(Debug)]\n", False, False),
    ("foo!(x);\nbar! { y }\nmacro_rules! m { () => {} }\n", False, True),
    ("foo! { y };\n", False, False),
    ("foo!(x)\nfn g() {}\n", False, False),
])
def test_only_items_where_items_stand(text, truncated, valid):
    s = score_sample(text, truncated)
    assert s.valid is valid
    if not valid:
        assert {e["kind"] for e in s.errors} & {"not-item", "no-item-after"}
