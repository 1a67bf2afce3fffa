"""A run's metrics.jsonl (one JSON object per line, the record of training) and what is made from it.

The trainer appends a `{"kind": "train", "step": ...}` row per log interval and a `{"kind": "val", ...}` row per
validation; `nanotrain.files.read_metrics` is the one reader. `TensorBoardLog` mirrors the rows into TensorBoard
event files beside metrics.jsonl (`nanotrain run --logger tensorboard`); metrics.jsonl stays the source of truth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
# Row fields that are bookkeeping, not metrics: never sent to TensorBoard.
NOT_METRICS = frozenset({"kind", "step", "time"})


def summary_writer_class() -> type:
    """`torch.utils.tensorboard.SummaryWriter`, or a UserError naming the extra that installs tensorboard."""
    from nanotrain.extras import require

    require("tensorboard", "--logger tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def scalar_tag(kind: str, key: str) -> str:
    """The TensorBoard tag of field `key` of a `kind` row: train/loss, train/lr, ..., val/ce, val/bpb."""
    return f"{kind}/{key.removeprefix(f'{kind}_')}"


class TensorBoardLog:
    """TensorBoard event files in `run_dir`, beside metrics.jsonl: one scalar per numeric field of each row,
    at the row's step and wall time. Opened at `start_step` (the step training continues from), it hides the
    events a stopped attempt logged after that step, as a resume drops those rows from metrics.jsonl."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.writer = summary_writer_class()(log_dir=str(run_dir), purge_step=start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        kind, step = row.get("kind"), row.get("step")
        for key, value in row.items():
            if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(scalar_tag(kind, key), value, global_step=step, walltime=row.get("time"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
