"""A hostile corpus for `nanotrain data build`: binary, non-UTF-8, empty, tiny and huge files, build folders,
non-files named *.rs. Each is skipped and counted by reason; a corpus with nothing usable is one clear line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from regression import spec

GOOD = ("sorting.rs", "lib.rs", "ffi.rs")


def good_files(src: Path) -> None:
    for name in GOOD:
        shutil.copy(spec.CORPUS / name, src / name)


def error_line(err: str) -> str:
    """The one error line (stderr also carries the progress bar); asserts there is exactly one and no traceback."""
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("nanotrain: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def build(src: Path, out: Path) -> tuple[int, str, str]:
    return spec.run_cli("nanotrain", "data", "build", "--src", src, "--out", out, "--vocab", 300,
                        "--split", "100/0/0", "--workers", 1)


def test_bad_files_are_skipped_and_counted_by_reason(tmp_path):
    src = tmp_path / "src"
    (src / "target" / "debug").mkdir(parents=True)
    good_files(src)
    rust = (spec.CORPUS / "sorting.rs").read_bytes()
    (src / "binary.rs").write_bytes(rust[:200] + b"\x00\x01\x02" + rust[200:400])
    latin1 = "// caf\u00e9 na\u00efve r\u00e9sum\u00e9\nfn main() { let s = \"\u00e9\u00e9\"; }\n"
    (src / "latin1.rs").write_bytes(latin1.encode("latin-1") * 2)
    (src / "empty.rs").write_bytes(b"")
    (src / "tiny.rs").write_bytes(b"fn f() {}\n")
    with open(src / "huge.rs", "wb") as f:  # 2 GB sparse: must be skipped from its size, never read
        f.truncate(2 * 1024**3)
    (src / "target" / "debug" / "build_out.rs").write_bytes(rust)
    (src / "zz_copy_of_lib.rs").write_bytes((spec.CORPUS / "lib.rs").read_bytes())
    os.mkfifo(src / "pipe.rs")  # a FIFO named like a source: reading it would block forever
    (src / "dir.rs").mkdir()
    (src / "dangling.rs").symlink_to(tmp_path / "nowhere.rs")

    code, out, err = build(src, tmp_path / "ds")
    assert code == 0, err
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert {k: v for k, v in meta["skipped"].items() if v} == {
        "binary": 1, "non_utf8": 1, "empty": 1, "too_small": 1, "too_large": 1, "excluded_path": 1}
    assert meta["duplicates_dropped"] == 1
    assert meta["files_kept"] == len(GOOD)
    assert "skipped: excluded_path 1, empty 1, too_small 1, too_large 1, binary 1, non_utf8 1" in out
    kept = [line.split("\t")[-1] for line in (tmp_path / "ds" / "files.tsv").read_text().splitlines()[1:]]
    assert sorted(p.rsplit("/", 1)[-1] for p in kept) == sorted(GOOD)


def test_corpus_with_only_bad_files_is_one_clear_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.rs").write_bytes(b"")
    (src / "binary.rs").write_bytes(b"\x00" * 100)
    (src / "latin1.rs").write_bytes(b"fn main() { let s = \"\xe9\xe9\"; } // padding padding padding padding\n")
    code, out, err = build(src, tmp_path / "ds")
    assert code == 2
    assert error_line(err).startswith(f"nanotrain: error: --src {src}: no usable .rs files left")
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_folder_without_rust_files_is_one_clear_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("no rust here\n")
    code, _, err = build(src, tmp_path / "ds")
    assert code == 2 and error_line(err) == f"nanotrain: error: --src {src}: no .rs files found"
