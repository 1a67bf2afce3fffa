"""Score Rust text: tree-sitter validity (truncation-aware), error density, lexer-aware bracket balance, distinct-3.

This replaces the seed's regex "coherence" heuristics (docs/original-runs.md, "Evaluation"; kept in
`nanoeval.seed_metrics`).

Validity ("rule B", environment.md §3): a sample that ended with EOS is valid iff it has no error. Errors are
tree-sitter-rust's ERROR/MISSING nodes plus what the grammar tolerates and rustc's parser rejects, found on the
tree: a statement where only items may stand (file top level and mod/impl/trait/extern bodies: `let`, a stray `;`,
an expression statement, a `foo!{..};` or a `foo!(..)` without `;`), a doc comment or attribute with no item after
it at the end of such a body, and (in a sample that ended on its own) at the end of the file. Such a statement
counts as ending with its first token: no continuation after a cut could make it an item. A sample cut at the
token limit is valid iff every error either reaches the cut (`end_byte >= len(code.rstrip())`) or starts on the
last, partial line (only when the sample has a complete line before it: a one-line sample is excused only by
errors that reach the cut). Two refinements were measured and dropped
(600 clean Debian crate files cut at 735/1470 chars, plus copies with one token deleted): taking the opening line of
an unterminated string as the partial line accepted +1.0/+0.8 points more clean cuts but +1.5/+1.2 points more
corrupted ones; ignoring trailing comments at the cut: +2.2/+1.3 clean, +6.1/+3.6 corrupted. Neither separates
better, so a cut inside a multi-line string or right after a comment may be rejected.

`nanoeval.rustc` gives the compiler's own verdict beside this one (`--validator rustc|both`).

Brackets: only (), [] and {} are counted. Angle brackets are not: without a parser `<`/`>` cannot be told apart
from comparisons, shifts, `->` and `=>` in Rust. Brackets inside string/char literals and comments are ignored.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from nanotrain.errors import UserError

MAX_LISTED_ERRORS = 50
"""`SampleScore.errors` lists at most this many nodes (in document order); `n_errors` counts them all."""

SNIPPET_CHARS = 40

_local = threading.local()


def _parser():
    """One tree-sitter parser per thread (and so per process), created on first use."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        import tree_sitter
        import tree_sitter_rust

        parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_rust.language()))
        _local.parser = parser
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Lexer: find the brackets that are code, skipping literals and comments.

_OPEN = {ord("("): ord(")"), ord("["): ord("]"), ord("{"): ord("}")}
_CLOSE = {v: k for k, v in _OPEN.items()}

# Things whose insides are not code. A lone quote (lifetime or label: 'a, 'static, '_, 'outer:) is skipped alone.
_SKIP = re.compile(
    rb"""
    (?=[/"'bcr])  # lets the regex engine skip ahead to candidate bytes (about 4x faster)
    (?:
      (?P<line_comment>//[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<raw_string>(?<!\w)[bc]?r(?P<hashes>\#*)")
    | (?P<string>"[^"\\]*(?:\\.[^"\\]*)*(?P<closed>")?)
    | (?P<char>'(?:[^'\\\n\x80-\xff]|[\xc0-\xff][\x80-\xbf]{1,3}
                 |\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]{1,8}\}|[^\n]))')
    | (?P<quote>')
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_BLOCK_EDGE = re.compile(rb"/\*|\*/")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"()[]{}")))  # bytes.translate deletes these
_REDUCE_ROUNDS = 32


@dataclass
class BracketReport:
    """Bracket matching result; `unterminated_at` is a byte offset into the UTF-8 text."""

    pairs: int = 0
    unmatched_open: int = 0
    unmatched_close: int = 0
    mismatched: int = 0
    open_at_end: int = 0
    counted_open_at_end: bool = True
    unterminated: str | None = None
    unterminated_at: int | None = None

    @property
    def problems(self) -> int:
        return (
            self.unmatched_open
            + self.unmatched_close
            + self.mismatched
            + (self.open_at_end if self.counted_open_at_end else 0)
        )

    @property
    def balance(self) -> float:
        """pairs / (pairs + problems): 1.0 iff every bracket is matched (or there are none), else in [0, 1)."""
        total = self.pairs + self.problems
        return 1.0 if total == 0 else self.pairs / total

    def to_dict(self) -> dict:
        d = dict(vars(self))  # flat fields: a plain copy (dataclasses.asdict deep-copies, ~4x slower)
        d["balance"] = self.balance
        return d


def _code_brackets(code: bytes, rep: BracketReport) -> bytes:
    """The (), [] and {} of `code` outside comments and literals, in order; notes an unterminated literal."""
    parts = []
    pos, n = 0, len(code)
    search = _SKIP.search
    while pos < n:
        m = search(code, pos)
        if m is None:
            break
        parts.append(code[pos : m.start()])
        kind = m.lastgroup
        if kind == "block_comment":
            depth, p = 1, m.end()
            while depth:
                e = _BLOCK_EDGE.search(code, p)
                if e is None:
                    rep.unterminated, rep.unterminated_at, p = "block_comment", m.start(), n
                    break
                depth += 1 if e.group() == b"/*" else -1
                p = e.end()
            pos = p
        elif kind == "raw_string":
            close = b'"' + m.group("hashes")
            end = code.find(close, m.end())
            if end < 0:
                rep.unterminated, rep.unterminated_at, pos = "raw_string", m.start(), n
            else:
                pos = end + len(close)
        else:
            if kind == "string" and m.group("closed") is None:
                rep.unterminated, rep.unterminated_at = "string", m.start()
            pos = m.end()
    parts.append(code[pos:])
    return b"".join(parts).translate(None, _NOT_BRACKET)


def lex_brackets(text: str | bytes, truncated: bool = False) -> BracketReport:
    """Match (), [] and {} outside string/char literals and comments (nested block comments, raw strings).

    A closer that meets a different opener on top of the stack is paired with the nearest matching opener
    below, and the openers it skips count as `unmatched_open`; with no matching opener anywhere it is a
    `mismatched` pair with the top opener (both dropped). A closer with an empty stack is `unmatched_close`.
    Openers still open at the end are `open_at_end`; they are penalised only when the sample was not
    truncated (a cut sample is expected to leave items open).
    """
    code = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    rep = BracketReport(counted_open_at_end=not truncated)
    brackets = _code_brackets(code, rep)
    # Adjacent matched pairs change nothing on the stack, so dropping them first (at C speed, a bounded number
    # of rounds so deep nesting cannot make it quadratic) leaves only the interesting remainder for the loop.
    n_before = len(brackets)
    for _ in range(_REDUCE_ROUNDS):
        reduced = brackets.replace(b"()", b"").replace(b"[]", b"").replace(b"{}", b"")
        if len(reduced) == len(brackets):
            break
        brackets = reduced
    rep.pairs = (n_before - len(brackets)) // 2
    rep.open_at_end = len(_match(brackets, rep))
    return rep


def _match(brackets: bytes, rep: BracketReport) -> list[int]:
    """Match the brackets left to right (counting into `rep`); the openers still open at the end, in order."""
    stack: list[int] = []
    for ch in brackets:
        want = _CLOSE.get(ch)
        if want is None:
            stack.append(ch)
        elif stack and stack[-1] == want:
            stack.pop()
            rep.pairs += 1
        elif not stack:
            rep.unmatched_close += 1
        elif want in stack:
            depth = len(stack) - 1 - stack[::-1].index(want)
            rep.unmatched_open += len(stack) - depth - 1
            del stack[depth:]
            rep.pairs += 1
        else:
            stack.pop()
            rep.mismatched += 1
    return stack


def closing_suffix(text: str | bytes) -> bytes:
    """What closes everything left open at the end of a cut sample: an unterminated string, raw string or (nested)
    block comment, then a newline (ending a line comment), then the open brackets, innermost first."""
    code = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    rep = BracketReport()
    stack = _match(_code_brackets(code, rep), rep)
    literal = b""
    if rep.unterminated == "string":
        literal = b'"'
    elif rep.unterminated == "raw_string":
        literal = b'"' + _SKIP.match(code, rep.unterminated_at).group("hashes")
    elif rep.unterminated == "block_comment":
        depth = 0
        for e in _BLOCK_EDGE.finditer(code, rep.unterminated_at):
            depth += 1 if e.group() == b"/*" else -1
        literal = b"*/" * max(depth, 1)
    return literal + b"\n" + bytes(_OPEN[c] for c in reversed(stack))


# ---------------------------------------------------------------------------------------------------------------
# Repetition.

_WORD = re.compile(rb"[\w\x80-\xff]+|\S")
"""The token definition, as a regex; `tokens` computes the same list (a test checks) about 2.5x faster."""
_SPACE = b" \t\n\r\x0b\x0c"  # re's \s for bytes, and what bytes.split() splits on
_SINGLE = [bytes([c]) for c in range(128) if not (bytes([c]).isalnum() or c == ord("_") or c in _SPACE)]


def tokens(code: bytes) -> list[bytes]:
    """`_WORD.findall(code)`: runs of letters, digits, `_` and bytes >= 0x80, and each other non-space byte alone.
    Built from C-speed bytes methods: put spaces around every byte that is a token by itself, then split."""
    for b in _SINGLE:
        if b in code:
            code = code.replace(b, b" " + b + b" ")
    return code.split()


def distinct_3(text: str | bytes) -> float:
    """Distinct token trigrams / all trigrams; 1.0 under 3 tokens. A token is a run of letters, digits, `_` and
    non-ASCII characters, or one other non-space character (so `foo(x)` is foo ( x ))."""
    code = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    toks = tokens(code)
    if len(toks) < 3:
        return 1.0
    return len(set(zip(toks, itertools.islice(toks, 1, None), itertools.islice(toks, 2, None)))) / (len(toks) - 2)


# ---------------------------------------------------------------------------------------------------------------
# tree-sitter validity.


@dataclass
class SampleScore:
    """Everything measured on one sample; `to_dict()` is what reports and `check-rust` print."""

    valid: bool
    truncated: bool
    n_bytes: int
    n_errors: int
    error_density: float
    errors: list[dict]
    first_error_line: int | None
    bracket_balance: float
    brackets: dict
    distinct_3: float

    def to_dict(self) -> dict:
        return asdict(self)


def _error_nodes(root) -> list:
    """All ERROR and MISSING nodes at any depth, in document order (only subtrees with errors are visited)."""
    out = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            out.append(node)
        if node.has_error:
            stack.extend(reversed(node.children))
    return out


# Where only items may stand (the file, and mod/impl/trait/extern bodies), the nodes tree-sitter-rust accepts there
# that may not be items (checked further in `_rule_errors`), and the last named node of a body (a dangling doc
# comment or attribute there has no item after it).
_ITEM_QUERY = """
(source_file [(let_declaration) (expression_statement) (empty_statement) (macro_invocation)] @stmt)
(declaration_list [(let_declaration) (expression_statement) (empty_statement) (macro_invocation)] @stmt)
(source_file (_) @last .)
(declaration_list (_) @last .)
"""
_COMMENTS = frozenset({"line_comment", "block_comment"})
_ITEM_DEPTH = 4
"""Item lists deeper in the tree than this are not checked (an impl in a mod, or in a function body, is at 4; one
more mod around it is at 6): the query would otherwise visit every expression node. Measured on 2 MB of crate
files: 962 of the 976 matches at any depth, in a third of the time."""


def _item_query():
    query = getattr(_local, "item_query", None)
    if query is None:
        import tree_sitter
        import tree_sitter_rust

        query = tree_sitter.Query(tree_sitter.Language(tree_sitter_rust.language()), _ITEM_QUERY)
        _local.item_query = query
    return query


def _paren_macro(node) -> bool:
    """A macro call delimited by () or [] (as an item it needs a `;`; one delimited by {} must not have one)."""
    if node is None or node.type != "macro_invocation" or node.child_count == 0:
        return False
    tree = node.children[-1]
    return tree.type == "token_tree" and tree.child_count > 0 and tree.children[0].type in ("(", "[")


def _first_token(node):
    """The first leaf of `node`: where a statement that cannot stand among items is already wrong, whatever a cut
    sample would have gone on to say (rustc points there too)."""
    while node.child_count:
        node = node.children[0]
    return node


def _is_outer_doc_or_attribute(node) -> bool:
    if node.type == "attribute_item":
        return True
    return node.type in _COMMENTS and any(c.type == "outer_doc_comment_marker" for c in node.children)


def _sibling(node, step: str):
    """The previous/next sibling (`step` "prev_sibling"/"next_sibling") that is not a comment."""
    node = getattr(node, step)
    while node is not None and node.type in _COMMENTS:
        node = getattr(node, step)
    return node


def _after_error(node) -> bool:
    """Whether an ERROR sibling comes before `node`: then it is tree-sitter's recovery from that error, which
    decides on its own."""
    node = node.prev_sibling
    while node is not None:
        if node.is_error:
            return True
        node = node.prev_sibling
    return False


def _rule_errors(root, truncated: bool) -> list[tuple[object, str]]:
    """(node, kind) for what tree-sitter-rust accepts where only items may stand but rustc's parser rejects:
    kind "not-item" (let, stray `;`, expression statement, `m!{..};`, `m!(..)` with no `;`) and "no-item-after"
    (a doc comment or attribute that ends an item list; at the end of the file only when not `truncated`)."""
    from tree_sitter import QueryCursor

    cursor = QueryCursor(_item_query())
    cursor.set_max_start_depth(_ITEM_DEPTH)
    found = cursor.captures(root)
    out: list[tuple[object, str]] = []
    for node in found.get("stmt", ()):
        kind = node.type
        if kind == "expression_statement":
            # `m!(..);` and `m![..];` are items: the one expression statement allowed here.
            parts = [c for c in node.children if c.type not in _COMMENTS]
            bad = not (len(parts) == 2 and _paren_macro(parts[0]) and parts[1].type == ";")
        elif kind == "empty_statement":
            # In an mod/impl/trait body tree-sitter keeps the `;` of `m!(..);` as its own node.
            bad = not _paren_macro(_sibling(node, "prev_sibling"))
        elif kind == "macro_invocation":
            following = _sibling(node, "next_sibling")
            bad = _paren_macro(node) and (following is None or following.type != "empty_statement")
        else:
            bad = True
        if bad and not _after_error(node):
            out.append((node, "not-item"))
    for node in found.get("last", ()):
        if node.parent.type == "source_file" and truncated:
            continue
        while node is not None and node.type in _COMMENTS and not _is_outer_doc_or_attribute(node):
            node = node.prev_named_sibling
        if node is not None and _is_outer_doc_or_attribute(node) and not _after_error(node):
            out.append((node, "no-item-after"))
    return out


def _describe(node, code: bytes, lines: list[bytes], rule_kind: str | None = None) -> dict:
    row, col_b = node.start_point.row, node.start_point.column
    line = lines[row] if row < len(lines) else b""
    col = len(line[:col_b].decode("utf-8", "replace")) + 1
    if node.is_missing:
        kind, snippet = "missing", node.type
    else:
        kind = rule_kind or "error"
        snippet = code[node.start_byte : node.start_byte + 4 * SNIPPET_CHARS].decode("utf-8", "replace")
        snippet = snippet[:SNIPPET_CHARS]
    return {"line": row + 1, "col": col, "kind": kind, "text": snippet}


def score_sample(text: str, truncated: bool) -> SampleScore:
    """Score one sample. `truncated`: it hit the token limit rather than ending with EOS (see module doc)."""
    code = text.encode("utf-8", "surrogatepass")
    root = _parser().parse(code).root_node
    errs = _error_nodes(root) if root.has_error else []
    rule = _rule_errors(root, truncated)
    kinds = {}
    if rule:
        kinds = {n.id: k for n, k in rule}
        errs = sorted(errs + [n for n, _ in rule], key=lambda n: (n.start_byte, n.end_byte))
    brackets = lex_brackets(code, truncated)
    valid = not errs
    if truncated and errs:
        cut = len(code.rstrip())
        last_line = code.rfind(b"\n", 0, cut) + 1
        # A sample with no complete line gets no last-line excuse: otherwise one line of garbage would pass.
        ends = {n.id: _first_token(n).end_byte for n, k in rule if k == "not-item" and not _paren_macro(n)}
        valid = all(ends.get(n.id, n.end_byte) >= cut or (last_line > 0 and n.start_byte >= last_line)
                    for n in errs)
    lines = code.split(b"\n") if errs else []
    listed = [_describe(n, code, lines, kinds.get(n.id)) for n in errs[:MAX_LISTED_ERRORS]]
    return SampleScore(
        valid=valid,
        truncated=truncated,
        n_bytes=len(code),
        n_errors=len(errs),
        error_density=len(errs) * 1024.0 / len(code) if code else 0.0,
        errors=listed,
        first_error_line=listed[0]["line"] if listed else None,
        bracket_balance=brackets.balance,
        brackets=brackets.to_dict(),
        distinct_3=distinct_3(code),
    )


def score_batch(texts: Sequence[str], truncated_flags: Sequence[bool] | bool = False) -> list[SampleScore]:
    """Score many samples; `truncated_flags` is one bool per text, or one bool for all."""
    if isinstance(truncated_flags, bool):
        truncated_flags = [truncated_flags] * len(texts)
    if len(truncated_flags) != len(texts):
        raise UserError(f"truncated flags: got {len(truncated_flags)} for {len(texts)} texts")
    return [score_sample(t, bool(f)) for t, f in zip(texts, truncated_flags)]


def aggregate(scores: Sequence[SampleScore]) -> dict:
    """Means over samples: `valid_rate`, `bracket_balance`, `error_density`, `distinct_3`, and `n` (None if n=0)."""
    n = len(scores)
    if n == 0:
        return {"n": 0, "valid_rate": None, "bracket_balance": None, "error_density": None, "distinct_3": None}
    return {
        "n": n,
        "valid_rate": sum(s.valid for s in scores) / n,
        "bracket_balance": sum(s.bracket_balance for s in scores) / n,
        "error_density": sum(s.error_density for s in scores) / n,
        "distinct_3": sum(s.distinct_3 for s in scores) / n,
    }
