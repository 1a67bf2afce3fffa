"""Fuzz: random bytes and mutated real Rust through score_sample and the lexer never crash, hang or leave range."""

import random
import time
from pathlib import Path

from nanoeval.rust import lex_brackets, score_sample

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rust_scoring"
PER_SAMPLE_S = 0.5
ALPHABET = "(){}[]<>'\"#/*\\rbc;:=!&|-+.,\n \t\u00e9\u20ac_a0"


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice("dis")
        i = rng.randrange(len(chars) + 1)
        if op == "d" and i < len(chars):
            del chars[i]
        elif op == "i":
            chars.insert(i, rng.choice(ALPHABET))
        elif op == "s" and len(chars) > 1:
            j = rng.randrange(len(chars))
            i = min(i, len(chars) - 1)
            chars[i], chars[j] = chars[j], chars[i]
    out = "".join(chars)
    return out[: rng.randint(0, len(out))]


def _samples(rng: random.Random, n: int):
    sources = [p.read_text() for p in sorted(FIX.glob("*.rs"))]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            yield rng.randbytes(rng.randint(0, 400)).decode("utf-8", "replace")
        elif kind < 0.45:
            yield "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 300)))
        else:
            yield _mutate(rng, rng.choice(sources))


def _check(text: str, truncated: bool) -> None:
    t0 = time.perf_counter()
    s = score_sample(text, truncated)
    rep = lex_brackets(text, truncated)
    assert time.perf_counter() - t0 < PER_SAMPLE_S, repr(text[:80])
    assert isinstance(s.valid, bool) and s.truncated is truncated
    assert 0.0 <= s.bracket_balance <= 1.0 and rep.balance == s.bracket_balance
    assert s.error_density >= 0.0 and 0.0 <= s.distinct_3 <= 1.0
    assert s.n_errors >= len(s.errors)
    assert (s.n_errors == 0) == (not s.errors) == (s.first_error_line is None)
    lines = text.encode("utf-8", "surrogatepass").split(b"\n")
    for e in s.errors:
        assert 1 <= e["line"] <= len(lines)
        line_chars = len(lines[e["line"] - 1].decode("utf-8", "replace"))
        assert 1 <= e["col"] <= line_chars + 1 and e["kind"] in ("error", "missing", "not-item", "no-item-after")
    if not truncated and s.n_errors == 0:
        assert s.valid


def test_fuzz_score_sample_and_lexer():
    rng = random.Random(1234)
    deadline = time.perf_counter() + 3.0
    n = 0
    for text in _samples(rng, 3000):
        _check(text, truncated=rng.random() < 0.5)
        n += 1
        if time.perf_counter() > deadline:
            break
    assert n >= 200
