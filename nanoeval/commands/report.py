"""`nanoeval report --session DIR`: the markdown report of a `nanotrain session` (nanoeval/session_report.py)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="markdown report of a training session (summary, progression, samples, findings)",
        description="Write the report of a session run by `nanotrain session`: an executive summary table (model, "
                    "architecture, steps, final loss, val CE, bpb, valid rate, causal), progression tables at the "
                    "original report's logged steps scaled to each run, throughput and wall time, sample "
                    "generations from the score reports, and findings computed from the numbers.",
    )
    p.add_argument("--session", type=Path, required=True, metavar="DIR",
                   help="session folder: RUNS/<session name> (holds session.json)")
    p.add_argument("--out", type=Path, metavar="FILE.md", help="report path (default DIR/report.md)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nanoeval.report import write_text
    from nanoeval.session_report import build_report
    from nanotrain.errors import UserError

    text = build_report(args.session)
    out = args.out if args.out is not None else args.session / "report.md"
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name like report.md")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    write_text(out, text)
    summary = text.split("## Executive summary", 1)[1].split("\n\n")[1]
    print(summary)
    print(f"\nreport: {out}")
    return 0
