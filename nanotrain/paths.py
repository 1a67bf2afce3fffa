"""Default locations. Everything lives under one data root (``$NANOLAB_DATA`` or ``./data``)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("NANOLAB_DATA", "data"))


def default_sources_dir() -> Path:
    """Where `nanotrain data fetch-debian` puts the Debian crate sources by default."""
    return data_root() / "sources" / "debian"


def full_sources_dir() -> Path:
    """Where the full corpus's sources (every crate package and the rustc tree) are fetched."""
    return data_root() / "sources" / "debian-all"


def default_dataset_dir(scale: str = "tiny") -> Path:
    """The dataset `nanotrain run` uses (and builds on first use) when --data is not given: the full corpus
    (rust-full) at full scale, the quickstart set of popular crates (rust-default) at the other scales."""
    return data_root() / "datasets" / ("rust-full" if scale == "full" else "rust-default")


def default_runs_dir() -> Path:
    return Path(os.environ.get("NANOLAB_RUNS", "runs"))
