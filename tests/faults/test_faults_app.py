"""The demo app must never open anything outside the runs folder it was started with. These are the tricky
spellings the HTTP tests in tests/integration/test_app.py do not send: a sibling folder sharing the prefix,
`..` after a valid run, a symlinked checkpoint inside a run, a checkpoint folder whose files are symlinks leaving
the runs folder, NUL bytes, and run names for the metrics tab.
The checkpoint is a copy of the committed tests/regression/ckpt_v1, so nothing is trained here."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from regression import spec

from nanotrain.errors import UserError

if str(spec.REPO) not in sys.path:
    sys.path.insert(0, str(spec.REPO))

from apps.demo import discover_checkpoints, resolve_checkpoint, resolve_run  # noqa: E402


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """base/runs/good/final (a real checkpoint), base/runs-evil/final and base/secret/final outside it, and
    base/runs/good/step_9 -> base/secret/final (a symlinked checkpoint leaving the folder), and
    base/runs/good/step_7, a real folder whose files are symlinks to base/secret/final's."""
    base = tmp_path_factory.mktemp("app_paths")
    for where in ("runs/good/final", "runs-evil/final", "secret/final"):
        shutil.copytree(spec.CKPT_V1, base / where)
    (base / "runs" / "good" / "step_9").symlink_to(base / "secret" / "final", target_is_directory=True)
    (base / "runs" / "good" / "step_7").mkdir()
    for f in (base / "secret" / "final").iterdir():
        (base / "runs" / "good" / "step_7" / f.name).symlink_to(f)
    return base


def test_valid_checkpoint_inside_the_runs_folder_resolves(layout):
    runs = layout / "runs"
    assert resolve_checkpoint(runs, "good/final") == (runs / "good" / "final").resolve()
    assert [e.name for e in discover_checkpoints(runs)] == ["good/final"]  # step_9 and step_7 are not offered


@pytest.mark.parametrize("choice", [
    "../runs-evil/final", "RUNS_EVIL_ABS", "good/../../secret/final", "good/final/../../../secret/final",
    "good/step_9", "good/step_7", "/", "..", "good/final\x00",
], ids=["sibling-prefix", "sibling-prefix-absolute", "dotdot-after-run", "dotdot-after-ckpt",
        "symlinked-ckpt", "symlinked-files", "root", "parent", "nul-byte"])
def test_checkpoint_outside_the_runs_folder_is_refused_with_one_line(layout, choice):
    runs = layout / "runs"
    if choice == "RUNS_EVIL_ABS":
        choice = str(layout / "runs-evil" / "final")
    with pytest.raises(UserError) as info:
        resolve_checkpoint(runs, choice)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("run", ["..", "../runs-evil", str(Path("/etc")), "good/../..", "", "good\x00"],
                         ids=["parent", "sibling", "absolute", "dotdot", "empty", "nul"])
def test_metrics_run_outside_the_runs_folder_is_refused(layout, run):
    with pytest.raises(UserError):
        resolve_run(layout / "runs", run)


def test_checkpoint_whose_files_leave_the_runs_folder_names_the_file(layout):
    with pytest.raises(UserError, match=r"'good/step_7': its config.json resolves outside the runs folder"):
        resolve_checkpoint(layout / "runs", "good/step_7")
