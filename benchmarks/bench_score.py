"""Scoring speed: `nanoeval.rust.score_sample` (parse + error walk + lexer + distinct-3) against a plain reference
(tree-sitter parse + `root.has_error` only) on the same real Rust files, on one core, in the same run.

Rounds alternate between the two so a busy neighbour on shared cores slows both alike; the median round is reported.
Writes benchmarks/results/bench_score.json (device, versions, MB/s, ratio).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, cpu_name, format_table, run_cli, write_json  # noqa: E402
from nanotrain.errors import UserError  # noqa: E402
from nanotrain.paths import default_sources_dir  # noqa: E402


def load_texts(src: Path, max_mb: float) -> list[str]:
    """UTF-8 *.rs files under `src` in sorted order, up to `max_mb` MB."""
    if not src.is_dir():
        raise UserError(f"--src {src}: no such folder (fetch sources with `nanotrain data fetch-debian`)")
    texts, total = [], 0
    for f in sorted(src.rglob("*.rs")):
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t.encode())
        if total >= max_mb * 1e6:
            break
    if not texts:
        raise UserError(f"--src {src}: no readable *.rs files")
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_score", description=__doc__)
    ap.add_argument("--src", type=Path, default=default_sources_dir(), help="folder of .rs files (recursive)")
    ap.add_argument("--max-mb", type=float, default=4.0, help="use the first files up to this many MB")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per scorer (median reported)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_score.json")
    args = ap.parse_args(argv)

    from nanoeval.rust import _parser, score_sample

    texts = load_texts(args.src, args.max_mb)
    blobs = [t.encode() for t in texts]
    mb = sum(len(b) for b in blobs) / 1e6
    parser = _parser()

    def reference() -> int:
        return sum(parser.parse(b).root_node.has_error for b in blobs)

    def ours() -> int:
        return sum(not score_sample(t, False).valid for t in texts)

    times: dict[str, list[float]] = {"reference": [], "nanoeval": []}
    flagged: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn in (("reference", reference), ("nanoeval", ours)):
            t0 = time.process_time()
            flagged[name] = fn()
            times[name].append(time.process_time() - t0)
    if flagged["reference"] != flagged["nanoeval"]:
        raise AssertionError(f"scorers disagree on invalid files: {flagged}")
    rows = []
    for name, ts in times.items():
        sec = statistics.median(ts)
        rows.append({"scorer": name, "files": len(texts), "mb": mb, "seconds": sec, "mb_per_s": mb / sec,
                     "invalid": flagged[name]})
    ratio = rows[1]["mb_per_s"] / rows[0]["mb_per_s"]
    for r in rows:
        r["ratio"] = r["mb_per_s"] / rows[0]["mb_per_s"]
    print(format_table(rows, [("scorer", "scorer"), ("files", "files"), ("mb", "MB"), ("seconds", "s (median)"),
                              ("mb_per_s", "MB/s"), ("ratio", "vs reference"), ("invalid", "invalid")]))
    result = {
        "schema": "nanolab.bench_score/1",
        "device": {"type": "cpu", "name": cpu_name(), "threads_used": 1},
        "versions": {"python": sys.version.split()[0],
                     **{p: importlib.metadata.version(p) for p in ("tree-sitter", "tree-sitter-rust")}},
        "settings": {"src": str(args.src), "max_mb": args.max_mb, "rounds": args.rounds,
                     "timer": "process CPU time, median round"},
        "rows": rows,
        "ratio": ratio,
    }
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("bench_score", main))
