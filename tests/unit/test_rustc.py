"""nanoeval.rustc: rustc's parse-only verdict beside tree-sitter's (one fixture per known disagreement class),
the truncation rule on rustc's error spans, rustc discovery, timeouts and `check-rust --validator`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nanoeval.cli import main
from nanoeval.rust import score_sample
from nanoeval.rustc import check_texts, find_rustc, verdict_from_diagnostics

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rustc_agreement"

# file -> (rustc's verdict, tree-sitter rule's verdict). Rows where they differ are the documented disagreements
# of tree-sitter-rust that the tree-sitter rule does not fix; the others it fixes or never had.
CLASSES = {
    "valid_items.rs": (True, True),
    "top_level_let.rs": (False, False),
    "top_level_semicolon.rs": (False, False),
    "top_level_unsafe_block.rs": (False, False),
    "struct_then_semicolon.rs": (False, False),
    "trailing_doc_comment.rs": (False, False),
    "trailing_attribute.rs": (False, False),
    "let_else_after_if_else.rs": (False, True),
    "second_self_parameter.rs": (False, True),
    "macro_calls_without_semicolon.rs": (False, True),
    "mut_tuple_struct_pattern.rs": (False, True),
    "tilde_in_macro_call.rs": (True, False),
}


def test_every_fixture_is_classified():
    assert sorted(p.name for p in FIX.glob("*.rs")) == sorted(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_tree_sitter_rule_verdict_is_as_documented(name):
    assert score_sample((FIX / name).read_text(), truncated=False).valid == CLASSES[name][1]


def _lines(capsys) -> dict[str, dict]:
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(r["file"]).name: r for r in rows}


def test_validator_rustc_gives_the_compilers_verdict(rustc, capsys):
    assert main(["check-rust", "--validator", "rustc", "--rustc", rustc.path, str(FIX)]) == 1  # invalid files
    rows = _lines(capsys)
    assert {n: r["valid"] for n, r in rows.items()} == {n: v[0] for n, v in CLASSES.items()}
    assert all(r["valid_rustc"] == r["valid"] and r["valid_tree_sitter"] is None for r in rows.values())
    let = rows["top_level_let.rs"]["rustc_errors"][0]
    assert let["line"] == 3 and "let" in let["message"] and not let["excused"]


@pytest.mark.parametrize("validator, status", [("tree-sitter", 0), ("both", 0), ("rustc", 1)])
def test_exit_status_follows_the_valid_column(rustc, capsys, validator, status):
    """A file rustc rejects and tree-sitter accepts fails the check only where `valid` is rustc's verdict."""
    path = FIX / "let_else_after_if_else.rs"
    assert main(["check-rust", "--validator", validator, "--rustc", rustc.path, str(path)]) == status
    assert json.loads(capsys.readouterr().out)["valid"] is (status == 0)


def test_validator_both_reports_agreement_and_the_disagreeing_files(rustc, capsys):
    assert main(["check-rust", "--validator", "both", "--rustc", rustc.path, str(FIX)]) == 1
    rows = _lines(capsys)
    assert {n: (r["valid_rustc"], r["valid_tree_sitter"]) for n, r in rows.items()} == CLASSES
    assert all(r["valid"] == r["valid_tree_sitter"] for r in rows.values())
    assert main(["check-rust", "--validator", "both", "--rustc", rustc.path, "--summary", str(FIX)]) == 1
    out = capsys.readouterr().out
    differ = sorted(n for n, (a, b) in CLASSES.items() if a != b)
    assert f"validator_agreement  {1 - len(differ) / len(CLASSES):.4f}" in out
    listed = out.split("disagreements (tree-sitter / rustc):\n")[1].split()
    assert sorted(Path(x).name for x in listed if x.endswith(".rs")) == differ


# A cut sample: rustc's lexer would stop at "unclosed delimiter" before the parser saw the `let =` before the cut.
@pytest.mark.parametrize("text,valid", [
    ("fn main() {\n    let x = 5;\n    foo(", True),
    ("fn main() {\n    let = 5;\n    foo(", False),
    ("fn main() {\n    let s = \"unterminated", True),
    ("fn main() {\n    /* a /* nested */ still open", True),
    ("fn main() {\n    let s = r#\"raw", True),
    ("fn main() {\n    let v = vec![1, 2,\n        3", True),
    ("fn main() {\n    let x = 1;\n}\nlet y = 2;\nfn g() {\n    g(", False),
    ("fn main() {\n    let x = 1;\n}\n/// doc", True),
    ("fn main() {\n    let x = 1;\n}\n#[derive(Debug)]\npub struct", True),
    ("fn main() {\n    x(]\n    let y", False),
    ("pub struct", True),
    # rustc reports a cut item at what came before it: its attribute, doc comment or `pub`
    ("impl V {\n    /// `HTTP/1.1`\n    pub ", True),
    ("fn f() {}\n\n#[tokio::test]\n#[cfg(feature = \"full\")]\nas", True),
    ("fn main() {\n    let x = ;\n    foo(", False),
    ("#[derive(Debug)]\nstruct S;\nfn g() {\n    g(", True),
])
def test_truncation_rule_on_rustc_spans(rustc, text, valid):
    assert check_texts([text], [True], rustc)[0].valid is valid


def test_a_sample_that_ended_on_its_own_gets_no_excuse(rustc):
    verdicts = check_texts(["fn main() {\n    foo(", "fn main() {}\n/// doc"], [False, False], rustc)
    assert [v.valid for v in verdicts] == [False, False]
    assert all(e["excused"] is False for v in verdicts for e in v.errors)


def test_crlf_and_shell_metacharacters_reach_rustc_as_text(rustc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts = ['fn f() -> &\'static str {\r\n    "$(touch pwned); `touch pwned2`"\r\n}\r\n',
             "fn g() {\r\n    let = 1;\r\n}"]
    verdicts = check_texts(texts * 3, [False, True] * 3, rustc, jobs=2)
    assert [v.valid for v in verdicts] == [True, False] * 3
    assert verdicts[1].errors[0]["line"] == 2
    assert not list(tmp_path.iterdir())


def _fake_rustc(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "rustc"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return exe


def test_discovery_order(rustc, tmp_path, monkeypatch):
    import nanoeval.rustc as mod

    real = rustc.path
    wrapper = _fake_rustc(tmp_path / "env", f'exec "{real}" "$@"\n')
    monkeypatch.setenv("NANOLAB_RUSTC", str(wrapper))
    assert find_rustc().path == str(wrapper) and find_rustc().origin == "$NANOLAB_RUSTC"
    assert find_rustc(real).path == real and find_rustc(real).origin == "--rustc"
    monkeypatch.delenv("NANOLAB_RUSTC")
    old = _fake_rustc(tmp_path / "usr", "echo 'rustc 1.63.0 (4b91a6ea7 2022-08-08)'\n")
    monkeypatch.setattr(mod, "SYSTEM_RUSTC", str(old))
    path_rustc = _fake_rustc(tmp_path / "path", f'exec "{real}" "$@"\n')
    monkeypatch.setenv("PATH", f"{path_rustc.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_rustc().path == str(path_rustc) and find_rustc().origin == "PATH"
    monkeypatch.setattr(mod, "SYSTEM_RUSTC", real)
    assert find_rustc().path == real


def test_no_fitting_rustc_is_one_line_naming_what_was_found(tmp_path, monkeypatch, capsys):
    import nanoeval.rustc as mod

    old = _fake_rustc(tmp_path / "usr", "echo 'rustc 1.63.0 (4b91a6ea7 2022-08-08)'\n")
    broken = _fake_rustc(tmp_path / "path", "exit 1\n")
    monkeypatch.setattr(mod, "SYSTEM_RUSTC", str(old))
    monkeypatch.setenv("PATH", str(broken.parent))
    monkeypatch.delenv("NANOLAB_RUSTC", raising=False)
    assert main(["check-rust", "--validator", "rustc", str(FIX / "valid_items.rs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{old} is 1.63.0" in err and f"{broken} (does not run as rustc)" in err and ">= 1.80" in err
    assert main(["check-rust", "--validator", "both", "--rustc", str(tmp_path / "nope"), str(FIX)]) == 2
    assert "--rustc" in capsys.readouterr().err


def test_a_rustc_that_hangs_times_out_as_invalid(rustc, tmp_path):
    from nanoeval.rustc import Rustc

    slow = _fake_rustc(tmp_path, "sleep 30\n")
    verdict = check_texts(["fn main() {}\n"], [False], Rustc(str(slow), (1, 96, 0), "--rustc"), timeout=0.5)[0]
    assert verdict.timed_out and not verdict.valid and "timed out" in verdict.errors[0]["message"]


def _diag(message: str, start: int, end: int, level: str = "error") -> str:
    span = {"byte_start": start, "byte_end": end, "is_primary": True, "line_start": 1, "column_start": start + 1}
    return json.dumps({"level": level, "message": message, "spans": [span]})


def test_span_rule_without_rustc():
    # cut at byte 30, last line starts at byte 20
    abort = json.dumps({"level": "error", "message": "aborting due to 1 previous error", "spans": []})
    assert verdict_from_diagnostics(_diag("at the cut", 28, 30) + "\n" + abort, 1, 30, 20).valid
    assert verdict_from_diagnostics(_diag("on the last line", 22, 23), 1, 30, 20).valid
    assert not verdict_from_diagnostics(_diag("before", 5, 8), 1, 30, 20).valid
    assert not verdict_from_diagnostics(_diag("one line", 5, 8), 1, 30, 0).valid
    assert not verdict_from_diagnostics(_diag("not cut", 28, 30), 1, None, 0).valid
    assert verdict_from_diagnostics(_diag("a warning", 5, 8, level="warning"), 0, None, 0).valid
    assert not verdict_from_diagnostics("", 101, None, 0).valid
