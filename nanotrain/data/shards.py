"""Dataset folders: build one from .rs sources, and read one back (uint16 memmaps + meta.json).

Folder layout: tokenizer.json, train.bin, val.bin, test.bin (uint16 token ids, no header, `<eos>` after every
file), meta.json, files.tsv (split, sha256, bytes, tokens, path of every kept file).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from nanotrain.data import corpus
from nanotrain.data.tokenizer import EOS_ID, MAX_VOCAB, check_vocab_size, file_sha256, load_tokenizer, train_tokenizer
from nanotrain.errors import UserError

SCHEMA_VERSION = 1
REQUIRED_FILES = ("tokenizer.json", "meta.json", "train.bin", "val.bin", "test.bin")
TOKENIZER_TRAIN_CHARS = 40_000_000  # cap on the text the BPE is trained on (keeps `build` fast; ample for 4k merges)
ENCODE_CHUNK = 256  # files per encode_batch call


def build_dataset(
    sources: list[Path],
    out: Path,
    *,
    vocab_size: int = 4096,
    seed: int = 0,
    split: str = "98/1/1",
    parse_filter: bool = True,
    force: bool = False,
    workers: int | None = None,
    tokenizer_train_chars: int = TOKENIZER_TRAIN_CHARS,
    progress: bool = True,
    allow_empty_splits: bool = False,
    split_by: str = "crate",
    heldout_min_files: int = corpus.HELDOUT_MIN_FILES,
    heldout_min_tokens: int = corpus.HELDOUT_MIN_TOKENS,
) -> dict:
    """Build a dataset folder at `out` from every .rs file under `sources`. Returns the meta dict.

    `split_by`: crate (every crate in one split, held-out splits filled to a floor of `heldout_min_files` files and
    `heldout_min_tokens` tokens where the corpus allows) or file (see `nanotrain.data.corpus`). A split given a
    non-zero share that receives no file is refused unless `allow_empty_splits`.

    Written into a temporary sibling and renamed into place, so `out` is never half-written; an existing `out`
    is replaced only with `force`.
    """
    from tqdm import tqdm

    t0 = time.time()
    out = Path(out)
    sources = [Path(s) for s in sources]
    check_vocab_size(vocab_size)
    fractions = corpus.parse_split(split)
    if split_by not in corpus.SPLIT_RULES:
        raise UserError(f"--split-by {split_by!r}: expected one of {', '.join(corpus.SPLIT_RULES)}")
    if heldout_min_files < 0 or heldout_min_tokens < 0:
        raise UserError(f"--heldout-min-files {heldout_min_files} / --heldout-min-tokens {heldout_min_tokens}: "
                        "must be >= 0")
    workers = max(1, workers or os.cpu_count() or 1)
    if out.exists() and not force:
        raise UserError(f"--out {out}: already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")

    say = print if progress else (lambda *a, **k: None)
    timings: dict[str, float] = {}
    col = corpus.collect(sources, progress=progress)
    timings["collect"] = round(time.time() - t0, 2)
    say(f"collected {len(col.files)} unique files ({col.seen} .rs seen, {col.duplicates} duplicates, "
        f"skipped {sum(col.skipped.values())})")
    files = col.files
    parse_rejects = 0
    if parse_filter and files:
        t_parse = time.time()
        files, parse_rejects = corpus.parse_filter(files, workers, progress=progress)
        timings["parse_filter"] = round(time.time() - t_parse, 2)
        say(f"tree-sitter rejected {parse_rejects} files")
    if not files:
        raise UserError(f"--src {', '.join(map(str, sources))}: no usable .rs files left after filtering")

    by_split: dict[str, list[corpus.SourceFile]] = {s: [] for s in corpus.SPLITS}
    if split_by == "crate":
        crate_split = corpus.assign_crate_splits(files, seed, fractions, min_files=heldout_min_files,
                                                 min_tokens=heldout_min_tokens)
        for f in files:
            by_split[crate_split[f.crate]].append(f)
    else:
        for f in files:
            by_split[corpus.split_of(f.sha256, seed, fractions)].append(f)
    for s in corpus.SPLITS:
        by_split[s].sort(key=lambda f: corpus.order_key(f.sha256, seed))
    if not by_split["train"]:
        raise UserError("no file landed in the train split (too few files for --split)")
    for s, fraction in zip(corpus.SPLITS, fractions):
        if fraction > 0 and not by_split[s] and not allow_empty_splits:
            raise UserError(f"--split {split}: no file landed in the {s} split ({len(files)} usable files"
                            + (f" in {_plural(len({f.crate for f in files}), 'crate')}" if split_by == "crate"
                               else "")
                            + f"); give more files, 0 for {s} to build without it, or --allow-empty-split")

    # Train the tokenizer on the train split only, capped, in the same deterministic order.
    train_texts, n_chars = [], 0
    for f in by_split["train"]:
        if n_chars >= tokenizer_train_chars:
            break
        train_texts.append(f.text)
        n_chars += len(f.text)
    say(f"training BPE (vocab {vocab_size}) on {len(train_texts)} files, {n_chars / 1e6:.1f}M chars")
    t_tok = time.time()
    tok = train_tokenizer(train_texts, vocab_size)
    del train_texts
    timings["tokenizer_train"] = round(time.time() - t_tok, 2)
    if tok.get_vocab_size() > MAX_VOCAB:
        raise UserError(f"tokenizer vocab {tok.get_vocab_size()} does not fit uint16")
    if tok.get_vocab_size() < vocab_size:
        print(f"warning: the tokenizer has {tok.get_vocab_size()} tokens, fewer than --vocab {vocab_size}: the "
              f"training text holds no more merges; this dataset fits only models with vocab_size "
              f"{tok.get_vocab_size()}", file=sys.stderr)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        t_enc = time.time()
        tok.save(str(tmp / "tokenizer.json"))
        splits_meta = {}
        roundtrip = {"checked": 0, "failed": 0}
        dropped_roundtrip: list[str] = []
        total_bytes = sum(f.nbytes for f in files)
        bar = tqdm(total=total_bytes, desc="encoding", unit="B", unit_scale=True, disable=not progress,
                   mininterval=0.5)
        with open(tmp / "files.tsv", "w", encoding="utf-8") as listing:
            listing.write("split\tsha256\tbytes\ttokens\tpath\n")
            for s in corpus.SPLITS:
                n_tok = n_bytes = n_files = 0
                with open(tmp / f"{s}.bin", "wb") as fbin:
                    group = by_split[s]
                    for i in range(0, len(group), ENCODE_CHUNK):
                        chunk = group[i : i + ENCODE_CHUNK]
                        encs = tok.encode_batch([f.text for f in chunk], add_special_tokens=False)
                        ids_list = [e.ids for e in encs]
                        decoded = tok.decode_batch(ids_list, skip_special_tokens=False)
                        parts = []
                        for f, ids, back in zip(chunk, ids_list, decoded):
                            roundtrip["checked"] += 1
                            if back != f.text:
                                roundtrip["failed"] += 1
                                dropped_roundtrip.append(f.path)
                                continue
                            arr = np.empty(len(ids) + 1, dtype=np.uint16)
                            arr[:-1] = ids
                            arr[-1] = EOS_ID
                            parts.append(arr)
                            n_tok += len(arr)
                            n_bytes += f.nbytes
                            n_files += 1
                            safe_path = f.path.replace("\t", " ").replace("\n", " ")
                            listing.write(f"{s}\t{f.sha256}\t{f.nbytes}\t{len(arr)}\t{safe_path}\n")
                        if parts:
                            np.concatenate(parts).tofile(fbin)
                        bar.update(sum(f.nbytes for f in chunk))
                splits_meta[s] = {
                    "files": n_files,
                    "crates": len({f.crate for f in by_split[s]}),
                    "bytes": n_bytes,
                    "tokens": n_tok,
                    "bytes_per_token": round(n_bytes / n_tok, 4) if n_tok else None,
                }
        bar.close()
        timings["encode_and_verify"] = round(time.time() - t_enc, 2)
        skipped = Counter({r: 0 for r in corpus.SKIP_REASONS})
        skipped.update(col.skipped)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "format": {"dtype": "uint16", "header": False, "eos_after_every_file": True},
            "vocab_size": tok.get_vocab_size(),
            "pad_id": 0,
            "eos_id": EOS_ID,
            "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
            "tokenizer_train": {"files": None, "chars": n_chars},
            "seed": seed,
            "split": split,
            "split_fractions": [round(x, 6) for x in fractions],
            "split_rule": _split_rule(split_by, heldout_min_files, heldout_min_tokens),
            "splits": splits_meta,
            "files_seen": col.seen,
            "files_kept": sum(m["files"] for m in splits_meta.values()),
            "skipped": dict(skipped),
            "duplicates_dropped": col.duplicates,
            "parse_filter": parse_filter,
            "parse_filter_rejects": parse_rejects,
            "roundtrip": {**roundtrip, "ok": roundtrip["failed"] == 0, "dropped": dropped_roundtrip[:20]},
            "sources": [_source_entry(s) for s in sources],
            "build_seconds": None,
            "timings_seconds": timings,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta["tokenizer_train"]["files"] = _count_train_files(by_split["train"], tokenizer_train_chars)
        if split_by == "crate":
            meta["heldout_crates"] = {s: sorted({f.crate for f in by_split[s]}) for s in corpus.SPLITS[1:]}
        meta["build_seconds"] = round(time.time() - t0, 2)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _split_rule(split_by: str, min_files: int, min_tokens: int) -> dict:
    """meta.json's description of how files were split (datasets without it were split by file)."""
    if split_by == "file":
        return {"by": "file"}
    return {"by": "crate", "heldout_min_files": min_files, "heldout_min_tokens": min_tokens,
            "heldout_max_share": corpus.HELDOUT_MAX_SHARE}


def split_rule(meta: dict) -> dict:
    """The split rule of a dataset's meta.json; datasets built before the crate rule were split by file."""
    return meta.get("split_rule") or {"by": "file"}


def heldout_floor_notes(meta: dict) -> list[str]:
    """One line per held-out split of a crate-split dataset that stayed below the floor (a small corpus)."""
    rule = split_rule(meta)
    if rule["by"] != "crate":
        return []
    notes = []
    for s, fraction in zip(corpus.SPLITS[1:], meta.get("split_fractions", [1, 0, 0])[1:]):
        m = meta["splits"][s]
        if fraction > 0 and (m["files"] < rule["heldout_min_files"] or m["tokens"] < rule["heldout_min_tokens"]):
            notes.append(f"{s}: {m['files']:,} files, {m['tokens']:,} tokens from {m.get('crates', 0)} crates, "
                         f"below the floor of {rule['heldout_min_files']:,} files and "
                         f"{rule['heldout_min_tokens']:,} tokens (the corpus has too few crates to spare: a held-out "
                         f"split takes at most {rule['heldout_max_share']:.0%} of it)")
    return notes


def _remove_dead_temps(out: Path) -> None:
    """Delete `.<out>.tmp-<pid>` / `.<out>.old-<pid>` folders of builds whose process no longer exists (killed
    mid-build); a live build's folder is left alone."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or not p.is_dir() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _count_train_files(train: list[corpus.SourceFile], cap: int) -> int:
    n = chars = 0
    for f in train:
        if chars >= cap:
            break
        n += 1
        chars += len(f.text)
    return n


def _source_entry(src: Path) -> dict:
    """Where the data came from; includes fetch-debian's package manifest (package/version/license) if present."""
    entry: dict = {"path": str(src.resolve())}
    manifest = src / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            entry["packages"] = [
                {k: p.get(k) for k in ("package", "version", "license", "rs_files", "rs_bytes")}
                for p in m.get("packages", [])
            ]
        except (json.JSONDecodeError, AttributeError):
            entry["manifest_error"] = f"{manifest}: unreadable"
    return entry


class Dataset:
    """A built dataset folder, validated on open: `.tokenizer`, `.meta`, `.vocab_size`, `.tokens(split)`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"{self.folder}: dataset folder not found (build one with `nanotrain data build`)")
        missing = [n for n in REQUIRED_FILES if not (self.folder / n).is_file()]
        if missing:
            raise UserError(f"{self.folder}: not a dataset folder, missing {', '.join(missing)}")
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.folder / 'meta.json'}: corrupt JSON ({e})") from None
        if not isinstance(self.meta, dict) or self.meta.get("schema_version") != SCHEMA_VERSION:
            version = self.meta.get("schema_version") if isinstance(self.meta, dict) else None
            raise UserError(
                f"{self.folder / 'meta.json'}: unknown schema_version {version!r} "
                f"(expected {SCHEMA_VERSION}; rebuild the dataset)"
            )
        try:
            self.vocab_size = int(self.meta["vocab_size"])
            counts = {s: int(self.meta["splits"][s]["tokens"]) for s in ("train", "val", "test")}
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{self.folder / 'meta.json'}: missing vocab_size or split token counts") from None
        for s, n in counts.items():
            size = (self.folder / f"{s}.bin").stat().st_size
            if size != 2 * n:
                raise UserError(
                    f"{self.folder / (s + '.bin')}: {size} bytes, but meta.json says {n} tokens ({2 * n} bytes); "
                    "the dataset is corrupt or incomplete"
                )
        self._counts = counts
        self.tokenizer = load_tokenizer(self.folder / "tokenizer.json")
        if self.tokenizer.get_vocab_size() != self.vocab_size:
            raise UserError(
                f"{self.folder / 'tokenizer.json'}: vocab {self.tokenizer.get_vocab_size()} does not match "
                f"meta.json vocab_size {self.vocab_size}"
            )
        self._tokens: dict[str, np.ndarray] = {}

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only uint16 memmap (an empty array for an empty split)."""
        if split not in self._counts:
            raise UserError(f"split {split!r}: expected one of train, val, test")
        if split not in self._tokens:
            if self._counts[split] == 0:
                self._tokens[split] = np.zeros(0, dtype=np.uint16)
            else:
                self._tokens[split] = np.memmap(self.folder / f"{split}.bin", dtype=np.uint16, mode="r")
        return self._tokens[split]

    def bytes_per_token(self, split: str) -> float:
        m = self.meta["splits"].get(split) or {}
        if not m.get("tokens"):
            return float("nan")
        return m["bytes"] / m["tokens"]

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / "tokenizer.json"
