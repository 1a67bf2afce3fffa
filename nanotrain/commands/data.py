"""`nanotrain data fetch-debian | build | stats`: get Rust sources, build a tokenized dataset, show its meta."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch Rust sources, build and inspect tokenized datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    f = dsub.add_parser("fetch-debian", help="download Debian librust-*-dev crate sources (no install)")
    f.add_argument("--out", type=Path, default=None, help="target folder (default: $NANOLAB_DATA/sources/debian)")
    f.add_argument("--crates", default="popular",
                   help="popular (default) | all | N random packages | popular+N (popular plus N random others)")
    f.add_argument("--rustc-src", action="store_true", help="also fetch rust-web-src (the rustc source tree)")
    f.add_argument("--seed", type=int, default=0, help="seed for --crates N and popular+N")
    f.set_defaults(func=_fetch)

    b = dsub.add_parser("build", help="build a dataset folder (tokenizer + uint16 shards) from .rs sources")
    b.add_argument("--src", type=Path, nargs="+", required=True, metavar="DIR", help="folders of .rs files")
    b.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    b.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size incl. <pad>, <eos> (max 65535)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and of the file order")
    b.add_argument("--split", default="98/1/1",
                   help="train/val/test shares of the corpus (default 98/1/1); with --split-by crate val and test "
                        "also fill up to the --heldout-min-* floor")
    b.add_argument("--split-by", choices=("crate", "file"), default="crate",
                   help="crate (default): every crate (package: the nearest Cargo.toml) lands in one split, so val "
                        "and test crates are never trained on; file: each file hashed on its own")
    b.add_argument("--heldout-min-files", type=int, default=100,
                   help="crate split: val and test each get at least this many files where the corpus allows "
                        "(default 100)")
    b.add_argument("--heldout-min-tokens", type=int, default=250_000,
                   help="crate split: val and test each get at least this many tokens where the corpus allows "
                        "(default 250000; estimated from bytes before tokenizing)")
    b.add_argument("--parse-filter", action=argparse.BooleanOptionalAction, default=True,
                   help="keep only files tree-sitter-rust parses without errors (default on)")
    b.add_argument("--allow-empty-split", action="store_true",
                   help="build even when a split given a share in --split receives no file (small corpora)")
    b.add_argument("--force", action="store_true", help="replace an existing --out")
    b.add_argument("--workers", type=int, default=None, help="processes for parsing (default: all cores)")
    b.set_defaults(func=_build)

    s = dsub.add_parser("stats", help="print a dataset's meta.json as a table")
    s.add_argument("dataset", type=Path)
    s.add_argument("--json", action="store_true", help="print the raw meta.json")
    s.set_defaults(func=_stats)


def _fetch(args) -> int:
    from nanotrain.data.debian import fetch_debian
    from nanotrain.paths import default_sources_dir

    fetch_debian(args.out or default_sources_dir(), crates=args.crates, rustc_src=args.rustc_src, seed=args.seed)
    return 0


def _build(args) -> int:
    from nanotrain.data.shards import build_dataset

    meta = build_dataset(args.src, args.out, vocab_size=args.vocab, seed=args.seed, split=args.split,
                         parse_filter=args.parse_filter, force=args.force, workers=args.workers,
                         allow_empty_splits=args.allow_empty_split, split_by=args.split_by,
                         heldout_min_files=args.heldout_min_files, heldout_min_tokens=args.heldout_min_tokens)
    print(format_stats(meta, args.out))
    return 0


def _stats(args) -> int:
    from nanotrain.data.shards import Dataset

    ds = Dataset(args.dataset)
    print(json.dumps(ds.meta, indent=2) if args.json else format_stats(ds.meta, args.dataset))
    return 0


def format_stats(meta: dict, folder: Path) -> str:
    """A readable summary of a dataset's meta.json."""
    lines = [f"dataset {folder}  (schema {meta.get('schema_version')}, built {meta.get('built_at')} "
             f"in {meta.get('build_seconds')} s)"]
    from nanotrain.data.shards import heldout_floor_notes, split_rule

    rule = split_rule(meta)
    how = ("by file" if rule["by"] == "file" else
           f"by crate (val and test: >= {rule['heldout_min_files']:,} files and {rule['heldout_min_tokens']:,} "
           f"tokens each where the corpus allows, at most {rule['heldout_max_share']:.0%} of it)")
    lines.append(f"vocab {meta['vocab_size']}  seed {meta['seed']}  split {meta['split']} {how}  "
                 f"tokenizer sha256 {meta['tokenizer_sha256'][:16]}…")
    lines.append("")
    lines.append(f"{'split':<6} {'files':>8} {'crates':>7} {'bytes':>14} {'tokens':>14} {'bytes/token':>12}")
    tot = {"files": 0, "bytes": 0, "tokens": 0}
    for s in ("train", "val", "test"):
        m = meta["splits"][s]
        for k in tot:
            tot[k] += m[k]
        bpt = f"{m['bytes_per_token']:.3f}" if m.get("bytes_per_token") else "-"
        crates = f"{m['crates']:,}" if m.get("crates") is not None else "-"
        lines.append(f"{s:<6} {m['files']:>8,} {crates:>7} {m['bytes']:>14,} {m['tokens']:>14,} {bpt:>12}")
    bpt = f"{tot['bytes'] / tot['tokens']:.3f}" if tot["tokens"] else "-"
    lines.append(f"{'total':<6} {tot['files']:>8,} {'':>7} {tot['bytes']:>14,} {tot['tokens']:>14,} {bpt:>12}")
    lines += [f"note: {n}" for n in heldout_floor_notes(meta)]
    lines.append("")
    rt = meta.get("roundtrip", {})
    lines.append(f"files seen {meta['files_seen']:,}, kept {meta['files_kept']:,}, duplicates dropped "
                 f"{meta['duplicates_dropped']:,}, parse-filter rejects {meta['parse_filter_rejects']:,}"
                 f"{'' if meta.get('parse_filter') else ' (filter off)'}")
    skipped = ", ".join(f"{k} {v:,}" for k, v in meta.get("skipped", {}).items() if v) or "none"
    lines.append(f"skipped: {skipped}")
    lines.append(f"round trip decode(encode(x)) == x: {rt.get('checked', 0) - rt.get('failed', 0):,}/"
                 f"{rt.get('checked', 0):,} files")
    if meta.get("timings_seconds"):
        lines.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in meta["timings_seconds"].items()))
    for src in meta.get("sources", []):
        pkgs = src.get("packages")
        extra = f", {len(pkgs)} Debian packages (manifest)" if pkgs else ""
        lines.append(f"source: {src['path']}{extra}")
        if pkgs:
            licenses: dict[str, int] = {}
            for p in pkgs:
                licenses[p.get("license") or "unknown"] = licenses.get(p.get("license") or "unknown", 0) + 1
            top = sorted(licenses.items(), key=lambda kv: -kv[1])[:6]
            lines.append("  licenses: " + ", ".join(f"{k} ({v})" for k, v in top))
    return "\n".join(lines)
