"""`nanotrain data build | stats | fetch-debian` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from nanotrain.cli import main
from nanotrain.data import debian

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rust"


def test_build_then_stats(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["data", "build", "--src", str(FIXTURES / "collections"), str(FIXTURES / "math"), "--out", str(out),
            "--vocab", "320", "--split", "1/0/0", "--workers", "1"]
    assert main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["files_kept"] == 7 and meta["vocab_size"] == 320 and len(meta["sources"]) == 2
    capsys.readouterr()
    assert main(["data", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "bytes/token" in table and "train" in table and "7/7 files" in table
    # A second build into the same folder is refused with one line on stderr, exit 2.
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanotrain: error: --out") and "--force" in err and "\n" not in err


def test_stats_of_a_non_dataset(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err


def test_fetch_without_apt_points_to_build(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    assert main(["data", "fetch-debian", "--out", str(tmp_path / "src")]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get" in err and "nanotrain data build --src" in err and "\n" not in err
    assert not (tmp_path / "src").exists()


def test_bad_crates_value(capsys, tmp_path):
    if debian.shutil.which("apt-cache") is None:
        return
    assert main(["data", "fetch-debian", "--out", str(tmp_path / "s"), "--crates", "some"]) == 2
    assert "--crates" in capsys.readouterr().err
