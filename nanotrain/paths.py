"""Default locations. Everything lives under one data root (``$NANOLAB_DATA`` or ``./data``)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("NANOLAB_DATA", "data"))


def default_sources_dir() -> Path:
    """Where `nanotrain data fetch-debian` puts the Debian crate sources by default."""
    return data_root() / "sources" / "debian"


def default_dataset_dir() -> Path:
    """The dataset `nanotrain run` uses (and builds on first use) when --data is not given."""
    return data_root() / "datasets" / "rust-default"


def default_runs_dir() -> Path:
    return Path(os.environ.get("NANOLAB_RUNS", "runs"))
