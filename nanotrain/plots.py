"""Figures of `nanotrain schedule --plot` and `nanotrain plot`: matplotlib (the `plot` extra) on the Agg backend,
imported only when a figure is asked for, and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nanotrain.errors import UserError

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_figure_path(path: Path, flag: str, what: str | None = None) -> Path:
    """Refuse a bad figure path `flag` before any work: wrong suffix, missing folder, or no matplotlib (said as
    needed by `what`, default the flag)."""
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"{flag} {path}: use a {', '.join(FIGURE_SUFFIXES)} file name")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    pyplot(what or flag)
    return path


def pyplot(flag: str) -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); UserError naming the extra when it is missing."""
    from nanotrain.extras import require

    matplotlib = require("matplotlib", flag)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` to `path` (format from its suffix) atomically (`nanotrain.files.atomic_write`), and close it."""
    import io

    import matplotlib.pyplot as plt

    from nanotrain.files import atomic_write

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    atomic_write(path, buffer.getvalue())
