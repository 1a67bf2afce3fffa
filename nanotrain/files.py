"""Files the project writes whole and the run log it appends to.

`atomic_write` is the one way a result file (a score report, session.json, a benchmark JSON, a plot, a
rewritten metrics log) is written: the bytes go to a uniquely named temporary file in the target's folder,
are flushed to disk, get mode 0644 and are renamed over the target, so a reader sees the old file or the new
one, never half of one, and two writers never share a temporary name. Checkpoints and datasets are folders and
have their own rename (`nanotrain.checkpoint`, `nanotrain.data.shards`).

`read_metrics` is the one reader of a run's `metrics.jsonl` (one JSON object per line, written by the Trainer).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FILE_MODE = 0o644


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically: temporary sibling, fsync, mode 0644, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON plus a newline, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """`text` written atomically."""
    return atomic_write(path, text)


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, val rows) of a metrics.jsonl, each sorted by step; ([], []) when the file is missing.

    Lines that are not a JSON object with an integer `step` (a half-written last line) are skipped. A train row
    for step s drops every earlier row at step >= s: the run resumed from an older checkpoint after a crash, and
    those rows belong to a timeline that was lost.
    """
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
            continue
        if row.get("kind") == "train":
            train = [r for r in train if r["step"] < row["step"]] + [row]
            val = [r for r in val if r["step"] < row["step"]]
        elif row.get("kind") == "val":
            val = [r for r in val if r["step"] != row["step"]] + [row]
    return train, sorted(val, key=lambda r: r["step"])
