"""The dataset used when the user gives no --data: built once from Debian crate sources, then reused.

At full scale it is the full corpus (every `librust-*-dev` package plus the rustc tree, ~114M training tokens),
so a full-scale run (10,000 steps of 2 x 1,024 = 20.5M tokens) sees each token at most once. At the other scales it
is the quickstart set of the popular crates (~7.9M tokens), which fetches and builds in a few minutes.
"""

from __future__ import annotations

from pathlib import Path

from nanotrain.paths import default_dataset_dir, default_sources_dir, full_sources_dir


def default_data_source(scale: str) -> tuple[str, bool, Path]:
    """What the default dataset of `scale` is built from: (--crates, --rustc-src, sources folder)."""
    if scale == "full":
        return "all", True, full_sources_dir()
    return "popular", False, default_sources_dir()


def ensure_default_dataset(path: str | Path | None = None, progress: bool = True, scale: str = "tiny") -> Path:
    """The default dataset folder of `scale`, fetching its sources and building it first if it is missing."""
    from nanotrain.data.debian import fetch_debian
    from nanotrain.data.shards import build_dataset

    out = Path(path) if path is not None else default_dataset_dir(scale)
    if (out / "meta.json").is_file():
        return out
    crates, rustc_src, sources = default_data_source(scale)
    say = print if progress else (lambda *a, **k: None)
    what = "every Debian Rust crate package and the rustc tree" if rustc_src else "the popular Debian Rust crates"
    say(f"no dataset at {out}: fetching {what} into {sources} and building it (once)")
    fetch_debian(sources, crates=crates, rustc_src=rustc_src, progress=progress)
    build_dataset([sources], out, progress=progress)
    say(f"default dataset ready: {out}")
    return out


def repeat_note(tokens_read: int, train_tokens: int, folder: Path) -> str | None:
    """One line when a run reads more tokens than the train split holds (so it sees them more than once)."""
    if tokens_read <= train_tokens:
        return None
    return (f"data: this run reads {tokens_read / 1e6:.1f}M training tokens, {tokens_read / train_tokens:.1f}x "
            f"the {train_tokens / 1e6:.1f}M in {folder}'s train split, so it sees them more than once")
