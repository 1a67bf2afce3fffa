"""Training curves where people look: `nanotrain run --logger tensorboard` mirrors metrics.jsonl into TensorBoard
event files (read back here with TensorBoard's own reader), and `nanotrain plot` draws runs into one image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_train_cli import nanotrain, small_tiny  # noqa: F401  (fixture)
from test_train_corpus import fixture_dataset, one_thread  # noqa: F401  (fixtures)

from nanotrain.files import read_metrics
from nanotrain.metrics import METRICS_FILE, NOT_METRICS, scalar_tag

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train(capsys, data: Path, out: Path, *flags, name: str = "baseline-v1") -> Path:
    code, _, err = nanotrain(capsys, "run", "baseline-v1", "--scale", "tiny", "--data", data, "--out", out,
                             "--name", name, "--no-progress", *flags)
    assert code == 0, err
    return out / name


def board_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (orphaned events of a lost timeline purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The same view made from metrics.jsonl, the source of truth."""
    train, val = read_metrics(run_dir / METRICS_FILE)
    out: dict[str, list[tuple[int, float]]] = {}
    for kind, rows in (("train", train), ("val", val)):
        for row in rows:
            for key, value in row.items():
                if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.setdefault(scalar_tag(kind, key), []).append((row["step"], value))
    return out


def assert_same(board: dict, jsonl: dict) -> None:
    assert sorted(board) == sorted(jsonl)
    for tag, points in jsonl.items():
        assert [s for s, _ in board[tag]] == [s for s, _ in points], tag
        assert [v for _, v in board[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag


def test_tensorboard_events_hold_the_metrics_of_metrics_jsonl(capsys, tmp_path, fixture_dataset, small_tiny):
    run_dir = train(capsys, fixture_dataset, tmp_path, "--steps", 4, "--logger", "tensorboard")
    assert list(run_dir.glob("events.out.tfevents.*"))
    board, jsonl = board_scalars(run_dir), jsonl_scalars(run_dir)
    assert {"train/loss", "train/ce", "train/lr", "val/ce", "val/bpb"} <= set(board)
    assert [s for s, _ in board["train/loss"]] == [2, 4] and [s for s, _ in board["val/ce"]] == [4]
    assert_same(board, jsonl)


def test_a_resume_hides_the_events_of_the_lost_timeline(capsys, tmp_path, fixture_dataset, small_tiny):
    """A run that logged up to step 6 but whose step_6 checkpoint is gone resumes from step_4: metrics.jsonl drops
    rows after 4, and TensorBoard shows each step once, as metrics.jsonl does."""
    run_dir = train(capsys, fixture_dataset, tmp_path, "--steps", 6, "--logger", "tensorboard")
    assert [s for s, _ in board_scalars(run_dir)["val/ce"]] == [4, 6]
    shutil.rmtree(run_dir / "step_6")
    train(capsys, fixture_dataset, tmp_path, "--resume", "auto", "--steps", 4, "--logger", "tensorboard")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    board = board_scalars(run_dir)
    assert [s for s, _ in board["val/ce"]] == [4, 8] and [s for s, _ in board["train/loss"]] == [2, 4, 6, 8]
    assert_same(board, jsonl_scalars(run_dir))


def test_default_logger_writes_no_events(capsys, tmp_path, fixture_dataset, small_tiny):
    run_dir = train(capsys, fixture_dataset, tmp_path, "--steps", 2)
    assert (run_dir / METRICS_FILE).is_file() and not list(run_dir.glob("events.out.tfevents.*"))


def test_missing_tensorboard_is_one_line_before_any_work(capsys, tmp_path, fixture_dataset, small_tiny,
                                                         monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import` of it raises ImportError
    code, out, err = nanotrain(capsys, "run", "baseline-v1", "--scale", "tiny", "--data", fixture_dataset,
                               "--out", tmp_path, "--logger", "tensorboard")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["nanotrain: error: --logger tensorboard needs the optional package "
                                        "tensorboard: pip install 'nanolab[plot]'"]
    assert not any(tmp_path.iterdir())


def test_plot_draws_two_runs_into_a_png(capsys, tmp_path, fixture_dataset, small_tiny):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from nanotrain.commands.plot import load_curves

    a = train(capsys, fixture_dataset, tmp_path, "--steps", 4, name="a")
    b = train(capsys, fixture_dataset, tmp_path, "--steps", 6, "--seed", 7, name="b")
    out = tmp_path / "curves.png"
    code, printed, err = nanotrain(capsys, "plot", a, b, "--out", out)
    assert code == 0, err
    assert printed.strip() == f"wrote {out} (2 run(s), {2 + 1 + 3 + 2} rows)"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (700, 1100) and pixels[..., :3].std() > 0.05  # four panels of lines, not blank
    assert [p.name for p in tmp_path.iterdir() if "curves" in p.name] == ["curves.png"]  # no temporary file left
    curves = load_curves(b, "b", need_tokens=True)
    assert curves.tokens_per_step == 4 * 32 and [r["step"] for r in curves.train] == [2, 4, 6]
    code, _, err = nanotrain(capsys, "plot", a, b, "--x", "step", "--out", tmp_path / "steps.svg")
    assert code == 0 and (tmp_path / "steps.svg").read_text().lstrip().startswith("<?xml"), err


def test_plot_errors_are_one_line(capsys, tmp_path, fixture_dataset, small_tiny):
    pytest.importorskip("matplotlib")
    run = train(capsys, fixture_dataset, tmp_path, "--steps", 2)
    (tmp_path / "empty").mkdir()
    nolog = tmp_path / "nolog"
    nolog.mkdir()
    (nolog / METRICS_FILE).write_text((run / METRICS_FILE).read_text())
    cases = [
        ((run, "--out", tmp_path / "x.txt"), "--out"),
        ((run, "--out", tmp_path / "no" / "x.png"), "does not exist"),
        ((tmp_path / "missing", "--out", tmp_path / "x.png"), "no such run folder"),
        ((tmp_path / "empty", "--out", tmp_path / "x.png"), "no metrics.jsonl"),
        ((nolog, "--out", tmp_path / "x.png"), "pass --x step"),
    ]
    for argv, needle in cases:
        code, out, err = nanotrain(capsys, "plot", *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x.png").exists()
    code, _, err = nanotrain(capsys, "plot", nolog, "--x", "step", "--out", tmp_path / "x.png")
    assert code == 0 and (tmp_path / "x.png").read_bytes()[:8] == PNG_MAGIC, err
