"""`nanoeval check-rust`: JSON lines, --truncated, --summary, stdin, folders, missing files, non-UTF-8 input."""

import io
import json
import sys
from pathlib import Path

from nanoeval.cli import main

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rust_scoring"


def run(capsys, *argv):
    rc = main(["check-rust", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_lines_per_file(capsys):
    rc, out, _ = run(capsys, str(FIX / "valid_shapes.rs"), str(FIX / "corrupted_let.rs"))
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and [r["valid"] for r in rows] == [True, False]  # 1: a file is invalid
    assert rows[1]["errors"][0]["line"] == 2 and rows[1]["errors"][0]["kind"] == "error"
    assert {"file", "valid", "error_density", "bracket_balance", "errors", "utf8_replaced"} <= set(rows[0])


def test_truncated_flag_and_folder(capsys):
    _, out, _ = run(capsys, "--truncated", str(FIX))
    rows = {Path(r["file"]).name: r for r in map(json.loads, out.splitlines())}
    assert len(rows) == len(list(FIX.glob("*.rs")))
    assert rows["truncated_mid_body.rs"]["valid"] and not rows["truncated_after_error.rs"]["valid"]


def test_summary_table(capsys):
    rc, out, _ = run(capsys, "--summary", str(FIX / "valid_shapes.rs"), str(FIX / "corrupted_let.rs"))
    table = dict(line.split(None, 1) for line in out.splitlines())
    assert rc == 1 and table["files"] == "2" and table["valid_rate"] == "0.5000"


def test_exit_status_gates_on_validity(capsys):
    """0 when every file is valid, 1 as soon as one is not (with or without --summary), so CI can use it."""
    assert run(capsys, str(FIX / "valid_shapes.rs"))[0] == 0
    assert run(capsys, "--summary", str(FIX / "valid_shapes.rs"))[0] == 0
    assert run(capsys, str(FIX / "corrupted_let.rs"))[0] == 1
    assert run(capsys, "--summary", str(FIX / "corrupted_let.rs"), str(FIX / "valid_shapes.rs"))[0] == 1


def test_stdin_and_non_utf8(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'fn main() { let s = "\xff\xfe"; }\n')))
    _, out, _ = run(capsys, "-")
    row = json.loads(out)
    assert row["file"] == "-" and row["utf8_replaced"] is True and row["valid"] is True


def test_missing_file_is_one_line_error(capsys, tmp_path):
    rc, out, err = run(capsys, str(tmp_path / "nope.rs"))
    assert rc == 2 and out == ""
    assert err.strip() == f"nanoeval: error: no such file: {tmp_path / 'nope.rs'}"


def test_empty_folder_is_an_error(capsys, tmp_path):
    rc, _, err = run(capsys, str(tmp_path))
    assert rc == 2 and "no *.rs files" in err
