"""Debian crate fetching (real apt in the slow test) and the default dataset hook."""

from __future__ import annotations

import json
import re
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


AVAILABLE = sorted([f"librust-{c}-dev" for c in debian.POPULAR_CRATES]
                   + [f"librust-other{i}-dev" for i in range(40)])


def test_popular_plus_n_adds_seeded_others_and_a_larger_n_only_adds(monkeypatch):
    monkeypatch.setattr(debian, "available_crate_packages", lambda: list(AVAILABLE))
    popular = set(debian.select_packages("popular", False, 0))
    ten = debian.select_packages("popular+10", False, 3)
    twenty = debian.select_packages("popular+20", True, 3)
    assert popular <= set(ten) and len(set(ten)) == len(popular) + 10
    assert set(ten) < set(twenty) and twenty[-1] == debian.RUSTC_SRC_PACKAGE
    assert len(set(twenty)) == len(popular) + 21
    assert set(ten) != set(debian.select_packages("popular+10", False, 4))
    assert debian.select_packages("popular+10", False, 3) == ten
    for bad in ("popular+0", "popular+x", "popular+", "popular10"):
        with pytest.raises(UserError, match=re.escape(f"--crates '{bad}': expected") + r".*popular\+N$"):
            debian.select_packages(bad, False, 0)


def test_default_data_is_the_full_corpus_only_at_full_scale(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOLAB_DATA", str(tmp_path))
    from nanotrain.paths import default_dataset_dir

    assert default.default_data_source("full") == ("all", True, tmp_path / "sources" / "debian-all")
    assert default_dataset_dir("full") == tmp_path / "datasets" / "rust-full"
    for scale in ("small", "tiny"):
        assert default.default_data_source(scale) == ("popular", False, tmp_path / "sources" / "debian")
        assert default_dataset_dir(scale) == tmp_path / "datasets" / "rust-default"


def test_full_scale_default_fetches_every_crate_and_the_rustc_tree(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOLAB_DATA", str(tmp_path / "data"))
    calls = []

    def fake_fetch(out, crates="popular", rustc_src=False, **kw):
        calls.append((Path(out), crates, rustc_src))
        shutil.copytree(FIXTURES, Path(out) / "x" / "librust-fixtures-dev")
        return {}

    monkeypatch.setattr(debian, "fetch_debian", fake_fetch)
    from nanotrain.data import shards

    real_build = shards.build_dataset
    monkeypatch.setattr(shards, "build_dataset",
                        lambda src, out, **kw: real_build(src, out, vocab_size=300, split="70/15/15", workers=1,
                                                          progress=False))
    path = default.ensure_default_dataset(progress=False, scale="full")
    assert path == tmp_path / "data" / "datasets" / "rust-full"
    assert calls == [(tmp_path / "data" / "sources" / "debian-all", "all", True)]
    assert default.ensure_default_dataset(progress=False, scale="full") == path and len(calls) == 1


def test_repeat_note_only_when_the_run_reads_more_than_the_train_split():
    assert default.repeat_note(1000, 1000, Path("d")) is None
    assert default.repeat_note(999, 1000, Path("d")) is None
    note = default.repeat_note(20_480_000, 7_890_000, Path("data/datasets/rust-default"))
    assert note == ("data: this run reads 20.5M training tokens, 2.6x the 7.9M in data/datasets/rust-default's "
                    "train split, so it sees them more than once")


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
