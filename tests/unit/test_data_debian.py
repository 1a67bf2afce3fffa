"""Debian crate fetching (real apt in the slow test) and the default dataset hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nanotrain.data import debian, default
from nanotrain.errors import UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rust"


def test_popular_list_is_large_enough():
    assert len(debian.POPULAR_CRATES) >= 30
    assert {"serde", "tokio", "regex", "syn", "clap"} <= set(debian.POPULAR_CRATES)


def test_missing_tools_is_one_user_error(monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="nanotrain data build --src"):
        debian.fetch_debian(Path("/nonexistent/never-created"))


def test_default_dataset_is_reused_without_fetching(monkeypatch, tmp_path, fixture_dataset):
    monkeypatch.setattr(debian, "fetch_debian", lambda *a, **k: pytest.fail("must not fetch"))
    path = tmp_path / "default"
    shutil.copytree(fixture_dataset, path)
    assert default.ensure_default_dataset(path, progress=False) == path


def test_default_dataset_is_built_once(monkeypatch, tmp_path):
    """Without a dataset, the sources are fetched into default_sources_dir() and built."""
    monkeypatch.setenv("NANOLAB_DATA", str(tmp_path / "data"))
    calls = []

    def fake_fetch(out, crates="popular", **kw):
        calls.append(crates)
        shutil.copytree(FIXTURES, Path(out) / "x" / "librust-fixtures-dev")
        return {}

    monkeypatch.setattr(debian, "fetch_debian", fake_fetch)
    from nanotrain.data import shards

    real_build = shards.build_dataset
    monkeypatch.setattr(shards, "build_dataset",
                        lambda src, out, **kw: real_build(src, out, vocab_size=300, split="80/10/10", workers=1,
                                                          progress=False, allow_empty_splits=True))
    path = default.ensure_default_dataset(progress=False)
    assert path == tmp_path / "data" / "datasets" / "rust-default"
    assert json.loads((path / "meta.json").read_text())["files_kept"] == len(list(FIXTURES.rglob("*.rs")))
    assert default.ensure_default_dataset(progress=False) == path
    assert calls == ["popular"]


@pytest.mark.slow
def test_fetch_two_random_crates_for_real(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("needs apt-get and dpkg")
    out = tmp_path / "src"
    manifest = debian.fetch_debian(out, crates="2", seed=5, progress=False)
    pkgs = manifest["packages"]
    assert len(pkgs) == 2
    for p in pkgs:
        assert p["package"].startswith("librust-") and "+" not in p["package"]
        assert p["version"] and (out / p["path"] / ".nanolab-unpacked").is_file()
        assert list((out / p["path"]).glob("usr/share/cargo/registry/*/Cargo.toml"))
    assert not (out / "debs").exists()
    again = debian.fetch_debian(out, crates="2", seed=5, progress=False)
    assert [p["package"] for p in again["packages"]] == [p["package"] for p in pkgs]
