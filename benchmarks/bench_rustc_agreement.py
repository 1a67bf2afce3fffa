"""Agreement of the tree-sitter validity rule with rustc's parser (`nanoeval.rustc`) on real crate files, and
rustc's parse throughput.

Files: the dataset's test split (`files.tsv` paths, read from the sources folder they were built from), or with
`--all` every *.rs file under the sources folder (including those the parse filter dropped); `--max-files` takes a
seeded random sample. Three conditions,
seeded: each file as it is; each cut at a uniformly random character (scored as truncated); each with one random
token-level corruption (delete, duplicate or swap a token, or insert a punctuation token; scored as not
truncated). For each: agreement, the 2x2 table, and the commonest reasons on each side of a disagreement. The
tree-sitter rule is also scored without its item checks ("plain"), to show what they change. Throughput: rustc
parse-only verdicts per second with `--jobs` processes, on the files as they are.
Writes JSON (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_name, format_table, run_cli, write_json  # noqa: E402
from nanotrain.errors import UserError  # noqa: E402
from nanotrain.paths import data_root, default_dataset_dir  # noqa: E402

_TOKEN = re.compile(r"[\w\u0080-\U0010ffff]+|\S")
_PUNCT = list(";,(){}[]=:.<>&|!?#")


def load_files(dataset: Path, sources: Path, split: str | None) -> list[tuple[str, str]]:
    """(name, text) of the split's files (or every *.rs under `sources` when `split` is None), sorted."""
    if split is None:
        paths = sorted(sources.rglob("*.rs"))
        if not paths:
            raise UserError(f"--sources {sources}: no *.rs files")
    else:
        listing = dataset / "files.tsv"
        if not listing.is_file():
            raise UserError(f"--data {dataset}: no files.tsv (build it with `nanotrain data build`)")
        rows = [line.split("\t") for line in listing.read_text(encoding="utf-8").splitlines()[1:]]
        paths = sorted(sources / r[4] for r in rows if r[0] == split)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"--sources {sources}: {missing[0]} missing ({len(missing)} of the split's files)")
    out = []
    for p in paths:
        try:
            out.append((str(p), p.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randint(1, max(1, len(text) - 1))]


def corrupt(rng: random.Random, text: str) -> str:
    toks = [m.span() for m in _TOKEN.finditer(text)]
    if len(toks) < 2:
        return text + rng.choice(_PUNCT)
    i = rng.randrange(len(toks) - 1)
    (a, b), (c, d) = toks[i], toks[i + 1]
    op = rng.choice(("delete", "duplicate", "swap", "insert"))
    if op == "delete":
        return text[:a] + text[b:]
    if op == "duplicate":
        return text[:b] + " " + text[a:b] + text[b:]
    if op == "swap":
        return text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    return text[:a] + rng.choice(_PUNCT) + " " + text[a:]


def plain_verdicts(texts: list[str], truncated: bool) -> list[bool]:
    """The tree-sitter rule without its item checks (tree-sitter-rust's ERROR/MISSING nodes only)."""
    from nanoeval import rust

    saved = rust._rule_errors
    rust._rule_errors = lambda *_: []
    try:
        return [rust.score_sample(t, truncated).valid for t in texts]
    finally:
        rust._rule_errors = saved


def condition(name: str, texts: list[str], truncated: bool, rustc, jobs: int) -> dict:
    from nanoeval.rust import score_sample
    from nanoeval.rustc import check_texts

    scores = [score_sample(t, truncated) for t in texts]
    t0 = time.perf_counter()
    verdicts = check_texts(texts, [truncated] * len(texts), rustc, jobs=jobs, progress=True)
    seconds = time.perf_counter() - t0
    ts = [s.valid for s in scores]
    rc = [v.valid for v in verdicts]
    plain = plain_verdicts(texts, truncated)
    n = len(texts)
    only_ts = [i for i in range(n) if ts[i] and not rc[i]]
    only_rc = [i for i in range(n) if rc[i] and not ts[i]]
    rustc_says = collections.Counter(
        _shape(next(e["message"] for e in verdicts[i].errors if not e["excused"])) for i in only_ts)
    ts_says = collections.Counter(
        next(e["kind"] for e in scores[i].errors) + ": " + next(e["text"] for e in scores[i].errors)[:20]
        for i in only_rc)
    return {
        "condition": name, "n": n, "truncated": truncated,
        "valid_rate_rustc": sum(rc) / n, "valid_rate_tree_sitter": sum(ts) / n,
        "agreement": sum(a == b for a, b in zip(ts, rc)) / n,
        "agreement_plain": sum(a == b for a, b in zip(plain, rc)) / n,
        "both_valid": sum(a and b for a, b in zip(ts, rc)),
        "both_invalid": sum(not a and not b for a, b in zip(ts, rc)),
        "tree_sitter_only_valid": len(only_ts), "rustc_only_valid": len(only_rc),
        "rustc_timeouts": sum(v.timed_out for v in verdicts),
        "rustc_seconds": round(seconds, 3), "rustc_files_per_s": n / seconds,
        "top_rustc_errors_when_only_tree_sitter_accepts": rustc_says.most_common(8),
        "top_tree_sitter_errors_when_only_rustc_accepts": ts_says.most_common(8),
    }


def _shape(message: str) -> str:
    """A rustc message with its quoted tokens kept but long lists cut, for counting."""
    return message if len(message) <= 70 else message[:67] + "..."


def main(argv: list[str] | None = None) -> int:
    from nanoeval.rustc import default_jobs, find_rustc

    ap = argparse.ArgumentParser(prog="bench_rustc_agreement", description=__doc__)
    ap.add_argument("--data", type=Path, default=default_dataset_dir(), help="dataset folder (its files.tsv)")
    ap.add_argument("--sources", type=Path, default=data_root() / "sources",
                    help="the folder files.tsv paths are relative to (default: $NANOLAB_DATA/sources)")
    ap.add_argument("--split", default="test", help="split of files.tsv to use (default test)")
    ap.add_argument("--all", action="store_true", help="every *.rs under --sources instead of one split")
    ap.add_argument("--max-files", type=int, default=None,
                    help="a seeded random sample of at most this many of the files (default: all of them)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cut points and corruptions (default 0)")
    ap.add_argument("--jobs", type=int, default=2, help="rustc processes at once (default 2)")
    ap.add_argument("--rustc", default=None, help="rustc to use (default: nanoeval's discovery)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    rustc = find_rustc(args.rustc)
    files = load_files(args.data, args.sources, None if args.all else args.split)
    rng = random.Random(args.seed)
    if args.max_files is not None and len(files) > args.max_files:
        files = sorted(rng.sample(files, args.max_files))
    texts = [t for _, t in files]
    cut = [truncate(rng, t) for t in texts]
    corrupted = [corrupt(rng, t) for t in texts]
    rows = [condition("as is", texts, False, rustc, args.jobs), condition("cut", cut, True, rustc, args.jobs),
            condition("corrupted", corrupted, False, rustc, args.jobs)]
    print(format_table(rows, [("condition", "condition"), ("n", "n"), ("agreement", "agreement"),
                              ("agreement_plain", "agreement (plain ts)"), ("valid_rate_rustc", "rustc valid"),
                              ("valid_rate_tree_sitter", "ts valid"), ("tree_sitter_only_valid", "only ts valid"),
                              ("rustc_only_valid", "only rustc valid"), ("rustc_files_per_s", "rustc files/s")]))
    for r in rows:
        print(f"\n{r['condition']}: rustc's errors where only tree-sitter accepts:")
        for msg, k in r["top_rustc_errors_when_only_tree_sitter_accepts"]:
            print(f"  {k:4}  {msg}")
        print(f"{r['condition']}: tree-sitter's first error where only rustc accepts:")
        for msg, k in r["top_tree_sitter_errors_when_only_rustc_accepts"]:
            print(f"  {k:4}  {msg!r}")
    result = {"cpu": cpu_name(), "rustc": rustc.to_dict(), "jobs": args.jobs, "cores": default_jobs(),
              "seed": args.seed, "files": "all sources" if args.all else f"split {args.split}",
              "n_files": len(files), "bytes": sum(len(t.encode()) for t in texts), "conditions": rows}
    if args.out is not None:
        write_json(args.out, result)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("bench_rustc_agreement", main))
