"""`nanoeval check-rust`: score Rust files with tree-sitter validity and lexer-aware bracket balance.

Prints one JSON object per file (or an aggregate table with --summary). Scoring is `nanoeval.rust.score_sample`.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path

from nanoeval.rustc import add_validator_args
from nanotrain.cli import EXIT_FOUND, EXIT_OK
from nanotrain.errors import UserError

HELP = "check Rust files: tree-sitter validity, error positions, bracket balance (JSON lines)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-rust",
        help=HELP,
        description=(
            "Parse Rust files with tree-sitter-rust and print one JSON line per file: file, valid, "
            "error_density (ERROR+MISSING nodes per KB), bracket_balance ((), [], {} outside strings and "
            "comments), errors [{line, col, kind}] (1-based), first_error_line, distinct_3. A folder means "
            "every *.rs file below it; '-' reads stdin. Invalid UTF-8 is decoded with replacement characters "
            "and flagged (\"utf8_replaced\": true). With --validator rustc or both each line also has "
            "valid_tree_sitter, valid_rustc and rustc_errors [{line, col, message, excused}], and `valid` is "
            "rustc's (rustc) or tree-sitter's (both); --summary adds rustc's valid rate, the agreement and the "
            "files the two disagree on. Exit status: 0 every file is valid, 1 at least one is not (so it can "
            "gate CI), 2 an input is missing or not a regular file."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="Rust source files, folders of them, or - for stdin")
    p.add_argument(
        "--truncated",
        action="store_true",
        help="treat every input as cut at a token limit: errors only at the cut (last line) do not make it "
        "invalid, and brackets left open at the end are not penalised",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print an aggregate table (files, valid rate, mean bracket balance, error density, distinct-3) "
        "instead of the per-file lines",
    )
    add_validator_args(p)
    p.set_defaults(func=run)


def _inputs(names: list[str]) -> list[str]:
    """Expand folders to their *.rs files (sorted); check that every named file exists before scoring."""
    out: list[str] = []
    for name in names:
        if name == "-":
            out.append(name)
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*.rs") if f.is_file())
            if not found:
                raise UserError(f"no *.rs files under folder: {name}")
            out.extend(found)
        elif path.is_file():
            out.append(name)
        else:
            raise UserError(f"{_not_a_file(path)}: {name}")
    return out


def _not_a_file(path: Path) -> str:
    """Why `path` (neither a folder nor a regular file) cannot be read as a source file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symlink" if path.is_symlink() else "no such file"
    except OSError as e:
        return f"cannot read ({e.strerror})"
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    kind = next((k for test, k in kinds if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _read(name: str) -> tuple[str, bool]:
    """The text of a file (or stdin for '-') and whether invalid UTF-8 had to be replaced."""
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror}") from None
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nanoeval.rust import aggregate, score_sample
    from nanoeval.rustc import check_texts, find_rustc, validity_summary

    rustc = find_rustc(args.rustc) if args.validator != "tree-sitter" else None
    names = _inputs(args.files)
    texts, scores, replaced = [], [], []
    for name in tqdm(names, desc="check-rust", unit="file", disable=None, file=sys.stderr):
        text, bad_utf8 = _read(name)
        texts.append(text)
        replaced.append(bad_utf8)
        scores.append(score_sample(text, args.truncated))
    verdicts = None
    if rustc is not None:
        verdicts = check_texts(texts, [args.truncated] * len(texts), rustc, progress=sys.stderr.isatty())
    valid = [v.valid for v in verdicts] if args.validator == "rustc" else [s.valid for s in scores]
    status = EXIT_OK if all(valid) else EXIT_FOUND
    if not args.summary:
        for i, (name, score) in enumerate(zip(names, scores)):
            row = {"file": name, **score.to_dict(), "utf8_replaced": replaced[i]}
            if verdicts is not None:
                v = verdicts[i]
                row.update(valid=v.valid if args.validator == "rustc" else score.valid,
                           valid_tree_sitter=None if args.validator == "rustc" else score.valid,
                           valid_rustc=v.valid, rustc_errors=v.errors)
            print(json.dumps(row, ensure_ascii=False))
        return status
    agg = aggregate(scores)
    n_bytes = sum(s.n_bytes for s in scores)
    summary = validity_summary(args.validator, None if args.validator == "rustc" else [s.valid for s in scores],
                               None if verdicts is None else [v.valid for v in verdicts])
    rows = [
        ("files", f"{agg['n']}"),
        ("bytes", f"{n_bytes}"),
        ("valid", f"{sum(valid)}"),
        ("valid_rate", f"{sum(valid) / len(valid):.4f}"),
        ("bracket_balance", f"{agg['bracket_balance']:.4f}"),
        ("error_density", f"{agg['error_density']:.4f}"),
        ("distinct_3", f"{agg['distinct_3']:.4f}"),
        ("truncated", "yes" if args.truncated else "no"),
    ]
    if args.validator != "tree-sitter":
        rows.insert(4, ("validator", args.validator))
        if args.validator == "both":
            rows.insert(5, ("valid_rate_rustc", f"{summary['valid_rate_rustc']:.4f}"))
            rows.insert(6, ("validator_agreement", f"{summary['validator_agreement']:.4f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if summary["validator_disagreements"]:
        print("disagreements (tree-sitter / rustc):")
        for i in summary["validator_disagreements"]:
            print(f"  {names[i]}  {'valid' if scores[i].valid else 'invalid'} / "
                  f"{'valid' if verdicts[i].valid else 'invalid'}")
    return status
