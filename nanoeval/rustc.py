"""rustc's own parser as a validity check beside tree-sitter, and the rustc that `--compile-check` uses.

`RUSTC_BOOTSTRAP=1 rustc -Z parse-crate-root-only --edition 2021 --error-format=json FILE` parses one file with
the compiler's parser: no macro expansion (a macro call's tokens are not parsed), no `mod foo;` files, no name
resolution or type checking. `-Z` flags are unstable, so the child process gets `RUSTC_BOOTSTRAP=1` (only it).

Verdict: a sample that ended on its own is valid iff rustc reports no error. A sample cut at the token limit is
first closed (`nanoeval.rust.closing_suffix`: an unterminated literal or comment, a newline, the open brackets)
so that rustc's lexer does not stop at "unclosed delimiter" before the parser sees the rest, and an empty item
follows (`CUT_ITEM`: something for a doc comment or attribute before the cut to attach to); then the same rule as
tree-sitter's applies to each error's primary spans (byte offsets into the file rustc read): an error is excused
iff each primary span ends at or after the cut (`len(code.rstrip())`) or starts on the last, partial line (when
the sample has a complete line before it). An error with no span is never excused. rustc reads CRLF as LF and
drops a leading BOM, so the text is given to it that way and the offsets count in that text. One more excuse
follows from how rustc reports an item that the cut removed: it points at what came before the item (its last
attribute, doc comment or `pub`), so such a span counts as the cut's when only blank space separates it from the
last line.

rustc discovery (`find_rustc`): `--rustc PATH`, else `$NANOLAB_RUSTC`, else `/usr/bin/rustc` if it is at least
`MIN_VERSION` (Debian: `apt-get install rustc-web`), else `rustc` on PATH; the one chosen must be at least
`MIN_VERSION`. Files run in parallel (a thread per core, each waiting on one rustc), each with a timeout, from a
private temporary folder; the text goes to a file and rustc gets an argument list (no shell).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanotrain.errors import UserError

MIN_VERSION = (1, 80)
SYSTEM_RUSTC = "/usr/bin/rustc"
ENV_VAR = "NANOLAB_RUSTC"
PARSE_TIMEOUT_S = 30.0
"""Per file. A parse takes milliseconds; a file that runs out of time gets an invalid verdict (`timed_out`)."""
MAX_LISTED_ERRORS = 10
VALIDATORS = ("tree-sitter", "rustc", "both")
CUT_ITEM = b"\nfn __nanoeval_cut() {}\n"
"""Appended after the closers of a cut sample: a doc comment, attribute or `pub` that the cut separated from its
item has one, so rustc does not report it on its own line (the item after the cut would have been there)."""

VALIDATOR_HELP = (
    "validity by tree-sitter (default), rustc (the compiler's parser: `RUSTC_BOOTSTRAP=1 rustc -Z "
    "parse-crate-root-only`; nanoeval sets RUSTC_BOOTSTRAP=1 for that child process only) or both (each sample "
    "carries both verdicts; the report adds their agreement rate and the disagreeing samples)"
)
RUSTC_HELP = (
    f"rustc for --validator rustc/both (default: ${ENV_VAR}, else {SYSTEM_RUSTC} if >= "
    f"{MIN_VERSION[0]}.{MIN_VERSION[1]}, else rustc on PATH; Debian: apt-get install rustc-web)"
)

_VERSION = re.compile(r"^rustc (\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Rustc:
    """A rustc that fits: its path, version and where it was found (--rustc, $NANOLAB_RUSTC, /usr/bin, PATH)."""

    path: str
    version: tuple[int, int, int]
    origin: str

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def to_dict(self) -> dict:
        return {"path": self.path, "version": self.version_str, "origin": self.origin}


def add_validator_args(p, compile_check: bool = False) -> None:
    """`--validator` and `--rustc` (shared by `score`, `check-rust` and `app`)."""
    p.add_argument("--validator", choices=VALIDATORS, default="tree-sitter", help=VALIDATOR_HELP)
    p.add_argument("--rustc", default=None, metavar="PATH",
                   help=RUSTC_HELP.replace("for --validator rustc/both", "for --validator rustc/both and "
                                           "--compile-check") if compile_check else RUSTC_HELP)


def rustc_version(path: str) -> tuple[int, int, int] | None:
    """`rustc --version` as a tuple; None when it does not run or does not say."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION.match(out.stdout.strip()) if out.returncode == 0 else None
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]


def _describe(path: str, version: tuple[int, int, int] | None) -> str:
    return f"{path} (does not run as rustc)" if version is None else f"{path} is {'.'.join(map(str, version))}"


def find_rustc(explicit: str | os.PathLike | None = None) -> Rustc:
    """The rustc to use (see the module doc for the order); UserError naming what was found when none fits."""
    need = f"{MIN_VERSION[0]}.{MIN_VERSION[1]}"
    for origin, given in (("--rustc", explicit), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)):
        if given is None:
            continue
        path = shutil.which(str(given))
        if path is None:
            raise UserError(f"{origin} {given}: no such executable")
        version = rustc_version(path)
        if version is None or version[:2] < MIN_VERSION:
            raise UserError(f"{origin} {given}: {_describe(path, version)}; need rustc >= {need}")
        return Rustc(path, version, origin)
    found = []
    candidates = [(SYSTEM_RUSTC, SYSTEM_RUSTC)] if os.path.exists(SYSTEM_RUSTC) else []
    on_path = shutil.which("rustc")
    if on_path is not None:
        candidates.append(("PATH", on_path))
    for origin, path in candidates:
        version = rustc_version(path)
        if version is not None and version[:2] >= MIN_VERSION:
            return Rustc(path, version, origin)
        found.append(_describe(path, version))
    seen = "; ".join(found) if found else f"no {SYSTEM_RUSTC} and no rustc on PATH"
    raise UserError(f"no rustc >= {need} found ({seen}): pass --rustc PATH or set ${ENV_VAR} "
                    "(Debian: apt-get install rustc-web)")


@dataclass
class RustcVerdict:
    """rustc's verdict on one sample: `errors` lists up to MAX_LISTED_ERRORS error diagnostics as {line, col,
    message, excused} (1-based; `excused`: at the cut of a truncated sample); `n_errors` counts them all."""

    valid: bool
    n_errors: int = 0
    errors: list[dict] = field(default_factory=list)
    timed_out: bool = False

    @property
    def first_error_line(self) -> int | None:
        return self.errors[0]["line"] if self.errors else None

    def to_dict(self) -> dict:
        return {**asdict(self), "first_error_line": self.first_error_line}


def _for_rustc(text: str) -> bytes:
    """The bytes rustc would see if it read `text` from a file: CRLF as LF, no leading BOM."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").encode("utf-8", "surrogatepass")


_ITEM_PREFIXES = (b"#[", b"///", b"/**", b"pub")


def _excused(span: dict, code: bytes, cut: int, last_line: int) -> bool:
    """The cut rule for one primary span (see the module doc)."""
    start, end = span["byte_start"], span["byte_end"]
    if end >= cut or (last_line > 0 and start >= last_line):
        return True
    # An attribute, doc comment or `pub` with only blank space before the last line: its item is the one cut.
    return (last_line > 0 and code[start:end].lstrip().startswith(_ITEM_PREFIXES)
            and not code[end:last_line].strip())


def verdict_from_diagnostics(stderr: str, returncode: int, cut: int | None, last_line: int,
                             code: bytes = b"") -> RustcVerdict:
    """Apply the rule of the module doc to rustc's JSON diagnostics. `cut`: None for a sample that ended on
    its own, else the byte offset of the cut; `last_line`: byte offset where the cut sample's last line starts;
    `code`: the bytes rustc read."""
    errors = []
    for line in stderr.splitlines():
        try:
            diag = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(diag, dict) or diag.get("level") not in ("error", "error: internal compiler error"):
            continue
        primary = [s for s in diag.get("spans") or () if s.get("is_primary")]
        if not primary and diag.get("message", "").startswith("aborting due to"):
            continue
        excused = cut is not None and bool(primary) and all(_excused(s, code, cut, last_line) for s in primary)
        first = primary[0] if primary else {}
        errors.append({"line": first.get("line_start"), "col": first.get("column_start"),
                       "message": diag.get("message", ""), "excused": excused})
    valid = all(e["excused"] for e in errors)
    if returncode != 0 and not errors:
        valid = False
        errors.append({"line": None, "col": None, "message": f"rustc exited with status {returncode} and no "
                       "error diagnostic", "excused": False})
    return RustcVerdict(valid=valid, n_errors=len(errors), errors=errors[:MAX_LISTED_ERRORS])


def default_jobs() -> int:
    """Processes to run at once: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _parallel(fn: Callable[[int], object], n: int, jobs: int | None, desc: str, progress: bool) -> list:
    """fn(0..n-1) on up to `jobs` threads (each waits on one child process), results in order."""
    from tqdm import tqdm

    jobs = max(1, min(jobs or default_jobs(), n or 1))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nanoeval-rustc") as pool:
        return list(tqdm(pool.map(fn, range(n)), total=n, desc=desc, unit="file", disable=not progress,
                         leave=False, file=sys.stderr))


def check_texts(texts: Sequence[str], truncated: Sequence[bool], rustc: Rustc, jobs: int | None = None,
                timeout: float = PARSE_TIMEOUT_S, progress: bool = False) -> list[RustcVerdict]:
    """rustc's parse-only verdict on each text (truncation-aware, see the module doc)."""
    from nanoeval.rust import closing_suffix

    if len(truncated) != len(texts):
        raise UserError(f"truncated flags: got {len(truncated)} for {len(texts)} texts")
    env = {**os.environ, "RUSTC_BOOTSTRAP": "1"}
    with tempfile.TemporaryDirectory(prefix="nanoeval-rustc-") as tmp:

        def one(i: int) -> RustcVerdict:
            code = _for_rustc(texts[i])
            cut, last_line = None, 0
            if truncated[i]:
                cut = len(code.rstrip())
                last_line = code.rfind(b"\n", 0, cut) + 1
                code += closing_suffix(code) + CUT_ITEM
            name = f"s{i}.rs"
            (Path(tmp) / name).write_bytes(code)
            argv = [rustc.path, "-Z", "parse-crate-root-only", "--edition", "2021", "--crate-type", "lib",
                    "--crate-name", "sample", "--error-format=json", name]
            try:
                out = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, errors="replace",
                                     timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                message = f"rustc timed out after {timeout:g} s"
                return RustcVerdict(valid=False, n_errors=1, timed_out=True,
                                    errors=[{"line": None, "col": None, "message": message, "excused": False}])
            finally:
                (Path(tmp) / name).unlink(missing_ok=True)
            return verdict_from_diagnostics(out.stderr, out.returncode, cut, last_line, code)

        return _parallel(one, len(texts), jobs, "rustc", progress)


def compile_texts(texts: Sequence[str], rustc: Rustc, jobs: int | None = None, timeout: float = 30.0,
                  progress: bool = False) -> list[bool]:
    """Whether each text compiles as a library crate with `rustc --emit=metadata` (warnings allowed)."""
    with tempfile.TemporaryDirectory(prefix="nanoeval-rustc-") as tmp:

        def one(i: int) -> bool:
            src, out = Path(tmp) / f"c{i}.rs", Path(tmp) / f"c{i}.rmeta"
            src.write_text(texts[i], encoding="utf-8", errors="surrogatepass")
            argv = [rustc.path, "--edition", "2021", "--crate-type", "lib", "--crate-name", "sample",
                    "--emit=metadata", "-A", "warnings", "-o", out.name, src.name]
            try:
                return subprocess.run(argv, cwd=tmp, capture_output=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL).returncode == 0
            except subprocess.TimeoutExpired:
                return False
            finally:
                src.unlink(missing_ok=True)
                out.unlink(missing_ok=True)

        return _parallel(one, len(texts), jobs, "rustc", progress)


def agreement(a: Sequence[bool], b: Sequence[bool]) -> tuple[float | None, list[int]]:
    """Share of positions where the two verdict lists agree (None when empty), and where they do not."""
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if bool(x) != bool(y)]
    return (1.0 - len(differ) / len(a) if len(a) else None), differ


def validity_summary(validator: str, tree_sitter: Sequence[bool] | None, rustc: Sequence[bool] | None) -> dict:
    """The report's validity fields for per-sample verdicts (None for a validator that did not run):
    `validator`, `valid_rate_tree_sitter`, `valid_rate_rustc`, and with both `validator_agreement` and
    `validator_disagreements` (the indices of the samples whose verdicts differ)."""
    if validator not in VALIDATORS:
        raise UserError(f"--validator {validator!r}: expected one of {', '.join(VALIDATORS)}")

    def rate(v):
        return None if v is None or not len(v) else sum(map(bool, v)) / len(v)

    out = {"validator": validator, "valid_rate_tree_sitter": rate(tree_sitter), "valid_rate_rustc": rate(rustc),
           "validator_agreement": None, "validator_disagreements": None}
    if tree_sitter is not None and rustc is not None:
        out["validator_agreement"], out["validator_disagreements"] = agreement(tree_sitter, rustc)
    return out
