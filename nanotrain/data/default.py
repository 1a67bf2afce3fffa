"""The dataset used when the user gives no --data: built once from the popular Debian crates, then reused."""

from __future__ import annotations

from pathlib import Path

from nanotrain.paths import default_dataset_dir, default_sources_dir


def ensure_default_dataset(path: str | Path | None = None, progress: bool = True) -> Path:
    """Return the default dataset folder, fetching the popular crates and building it first if it is missing."""
    from nanotrain.data.debian import fetch_debian
    from nanotrain.data.shards import build_dataset

    out = Path(path) if path is not None else default_dataset_dir()
    if (out / "meta.json").is_file():
        return out
    sources = default_sources_dir()
    say = print if progress else (lambda *a, **k: None)
    say(f"no dataset at {out}: fetching the popular Debian Rust crates into {sources} and building it (once)")
    fetch_debian(sources, crates="popular", progress=progress)
    build_dataset([sources], out, progress=progress)
    say(f"default dataset ready: {out}")
    return out
