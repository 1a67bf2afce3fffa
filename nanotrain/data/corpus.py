"""Collect Rust source files: walk folders, skip what is not training material, drop duplicates, split them.

Every skipped file is counted by reason (nothing here is fatal). Two split rules:

- `crate` (the default): every file of a crate lands in the same split, so val and test crates are never seen in
  training. A file's crate is the `[package] name` of the nearest Cargo.toml above it (so two versions of a crate
  are one crate), else that Cargo.toml's folder; the files of a folder with no Cargo.toml above it form one
  crate. Crates are taken in an order hashed from their name and the seed: val, then test, take crates until
  they reach their share of the corpus bytes and the floor (`HELDOUT_MIN_FILES` files, `HELDOUT_MIN_TOKENS`
  tokens estimated from bytes), without growing past `HELDOUT_MAX_SHARE` of the corpus (or their share, if
  larger); a crate too big to fit is skipped (when every crate is, the split takes the smallest one). So the
  split depends on which crates the corpus holds, and a small corpus gets held-out splits below the floor.
- `file`: the split of a file is a pure function of its content and the seed, so adding or removing other files
  never moves a file between train/val/test; files of one crate can sit on both sides.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nanotrain.errors import UserError

MIN_BYTES = 50
MAX_BYTES = 500_000
SPLITS = ("train", "val", "test")
# Build outputs and vendored copies: any path component named like this is skipped.
EXCLUDED_DIRS = frozenset({"target", "vendor", ".git", ".hg", ".svn", "node_modules"})
# Generated or vendored subtrees, matched as consecutive path components.
EXCLUDED_SUBPATHS = (("library", "stdarch"),)

SPLIT_RULES = ("crate", "file")
HELDOUT_MIN_FILES = 100  # floor on the files of a held-out split (crate rule), where the corpus allows
HELDOUT_MIN_TOKENS = 250_000  # floor on the tokens of a held-out split (crate rule), where the corpus allows
HELDOUT_MAX_SHARE = 0.10  # the floor never makes a held-out split take more of the corpus bytes than this
EST_BYTES_PER_TOKEN = 3.3  # the token floor in bytes (the split comes before the tokenizer); Rust BPE 4k: ~3.0-3.2

SKIP_REASONS = ("excluded_path", "empty", "too_small", "too_large", "binary", "non_utf8", "unreadable")


@dataclass
class SourceFile:
    """One kept file: where it came from, its text and the sha256 of its bytes."""

    path: str  # "<source folder name>/<path inside it>", for reports
    text: str
    sha256: str
    nbytes: int
    crate: str = ""  # the crate (package) the file belongs to; see the module doc


@dataclass
class Collection:
    files: list[SourceFile] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    duplicates: int = 0
    seen: int = 0


def parse_split(spec: str) -> tuple[float, float, float]:
    """'98/1/1' -> fractions (0.98, 0.01, 0.01). Any three non-negative numbers with a positive sum."""
    parts = spec.replace(",", "/").split("/")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) != 3 or min(nums) < 0 or nums[0] <= 0:
        raise UserError(f"--split {spec!r}: expected three numbers train/val/test like 98/1/1 (train > 0)")
    total = sum(nums)
    return nums[0] / total, nums[1] / total, nums[2] / total


def split_of(sha256: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of a file, from a hash of its content and the seed only."""
    h = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def crate_order_key(crate: str, seed: int) -> str:
    """Crates are offered to the held-out splits in this (name-hashed) order."""
    return hashlib.sha256(f"crate:{seed}:{crate}".encode()).hexdigest()


def assign_crate_splits(files: list[SourceFile], seed: int, fractions: tuple[float, float, float], *,
                        min_files: int = HELDOUT_MIN_FILES, min_tokens: int = HELDOUT_MIN_TOKENS,
                        max_share: float = HELDOUT_MAX_SHARE) -> dict[str, str]:
    """The split of every crate of `files` under the crate rule (see the module doc): {crate: split}."""
    n_files: Counter = Counter()
    n_bytes: Counter = Counter()
    for f in files:
        n_files[f.crate] += 1
        n_bytes[f.crate] += f.nbytes
    order = sorted(n_files, key=lambda c: crate_order_key(c, seed))
    total = sum(n_bytes.values())
    where: dict[str, str] = {}
    for split, fraction in zip(SPLITS[1:], fractions[1:]):
        if fraction <= 0:
            continue
        target = max(fraction * total, min_tokens * EST_BYTES_PER_TOKEN)
        cap = max(fraction * total, max_share * total)
        have_files = have_bytes = 0
        for crate in order:
            if crate in where or have_bytes + n_bytes[crate] > cap:
                continue
            if len(where) + 1 >= len(order):
                break  # the last unassigned crate stays in train
            where[crate] = split
            have_files += n_files[crate]
            have_bytes += n_bytes[crate]
            if have_bytes >= target and have_files >= min_files:
                break
        free = [c for c in order if c not in where]
        if not have_files and len(free) > 1:  # every crate is bigger than the cap: the smallest one
            where[min(free, key=lambda c: n_bytes[c])] = split
    return {c: where.get(c, "train") for c in order}


def order_key(sha256: str, seed: int) -> str:
    """Files are written in this (content-hashed) order, so crates are mixed within each split."""
    return hashlib.sha256(f"order:{seed}:{sha256}".encode()).hexdigest()


def is_excluded(rel_parts: tuple[str, ...]) -> bool:
    dirs = rel_parts[:-1]
    if any(p in EXCLUDED_DIRS for p in dirs):
        return True
    for sub in EXCLUDED_SUBPATHS:
        n = len(sub)
        if any(tuple(dirs[i : i + n]) == sub for i in range(len(dirs) - n + 1)):
            return True
    return False


def classify(data: bytes) -> str | None:
    """Skip reason for a file's bytes, or None to keep it."""
    if not data:
        return "empty"
    if b"\x00" in data:
        return "binary"
    if len(data) < MIN_BYTES:
        return "too_small"
    if len(data) > MAX_BYTES:
        return "too_large"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    return None


def iter_rust_paths(root: Path):
    """Yield (path, parts relative to root) for every *.rs file under root, sorted, not following symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".rs"):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                yield p, p.relative_to(root).parts


def collect(sources: list[Path], progress: bool = True) -> Collection:
    """Read every .rs file under `sources`, skip bad ones by reason and drop exact duplicates (first path wins)."""
    from tqdm import tqdm

    out = Collection()
    by_hash: set[str] = set()
    for src in sources:
        if not src.is_dir():
            raise UserError(f"--src {src}: not a folder")
    bar = tqdm(desc="reading .rs files", unit=" files", disable=not progress, mininterval=0.5)
    manifests: dict[Path, str | None] = {}
    for src in sources:
        label = src.resolve().name
        for path, parts in iter_rust_paths(src):
            out.seen += 1
            bar.update(1)
            if is_excluded(parts):
                out.skipped["excluded_path"] += 1
                continue
            try:
                size = path.stat().st_size
                if size > MAX_BYTES:
                    out.skipped["too_large"] += 1
                    continue
                data = path.read_bytes()
            except OSError:
                out.skipped["unreadable"] += 1
                continue
            reason = classify(data)
            if reason:
                out.skipped[reason] += 1
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in by_hash:
                out.duplicates += 1
                continue
            by_hash.add(sha)
            out.files.append(SourceFile("/".join((label, *parts)), data.decode("utf-8"), sha, len(data),
                                        crate_of(src, label, parts, manifests)))
    bar.close()
    if not out.files and out.seen == 0:
        where = ", ".join(str(s) for s in sources)
        raise UserError(f"--src {where}: no .rs files found")
    return out


def crate_of(src: Path, label: str, parts: tuple[str, ...], manifests: dict[Path, str | None]) -> str:
    """The crate of the file at `src/parts`: see the module doc. `manifests` caches folder -> crate (or None)."""
    for depth in range(len(parts) - 1, -1, -1):
        folder = src.joinpath(*parts[:depth])
        if folder not in manifests:
            manifests[folder] = _manifest_crate(folder, label, parts[:depth])
        if manifests[folder] is not None:
            return manifests[folder]
    return "/".join((label, *parts[:-1]))


def _manifest_crate(folder: Path, label: str, rel: tuple[str, ...]) -> str | None:
    """The crate named by `folder/Cargo.toml`: its [package] name, else the folder; None without a Cargo.toml."""
    manifest = folder / "Cargo.toml"
    if not manifest.is_file():
        return None
    try:
        name = tomllib.loads(manifest.read_text(encoding="utf-8")).get("package", {}).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else "/".join((label, *rel))


_PARSER = None


def _parses_cleanly(text: str) -> bool:
    global _PARSER
    if _PARSER is None:
        import tree_sitter as ts
        import tree_sitter_rust as tsr

        _PARSER = ts.Parser(ts.Language(tsr.language()))
    return not _PARSER.parse(text.encode("utf-8")).root_node.has_error


def parse_filter(files: list[SourceFile], workers: int, progress: bool = True) -> tuple[list[SourceFile], int]:
    """Keep the files tree-sitter-rust parses without errors. Returns (kept, number rejected)."""
    from tqdm import tqdm

    texts = (f.text for f in files)
    bar = tqdm(total=len(files), desc="tree-sitter parse", unit=" files", disable=not progress, mininterval=0.5)
    if workers > 1 and len(files) > 64:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            ok = []
            for r in pool.imap(_parses_cleanly, texts, chunksize=16):
                ok.append(r)
                bar.update(1)
    else:
        ok = []
        for t in texts:
            ok.append(_parses_cleanly(t))
            bar.update(1)
    bar.close()
    kept = [f for f, good in zip(files, ok) if good]
    return kept, len(files) - len(kept)
