"""`nanotrain session` end to end on the CPU: a 2-run mini session (engram-v1, then engram-v2 continuing it) with real
`nanotrain run` / `nanoeval score` subprocesses on the fixture dataset, paused, continued, re-invoked (finished runs
skipped), and reported with `nanoeval report --session`.

The subprocesses run the real CLIs; only the recipes' tiny shape is swapped for a micro one inside them (the CLI has
no shape flags), so a run takes a second or two. The slow test runs sessions/seed.toml at the real tiny scale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from nanoeval.cli import main as nanoeval_main
from nanotrain.cli import main as nanotrain_main
from nanotrain.session import Launcher, Runner, Slot, build_plan, load_session

REPO = Path(__file__).resolve().parents[2]
MICRO_MODEL = dict(vocab_size=512, dim=32, n_layers=5, n_heads=2, n_kv_heads=1, ffn_mult=2.0, ffn_multiple_of=16,
                   max_seq_len=64, engram_d_mem=8, engram_table_size=101, engram_heads=2, wavefield_field_size=16,
                   wavefield_haar_levels=2)
MICRO_TRAIN = dict(batch_size=4, seq_len=32, total_steps=4, warmup_steps=1, lr=0.02, lion_lr=1e-3, log_every=1,
                   eval_every=0, eval_batches=2, ckpt_every=0, dtype="fp32")
# `python -c` program: `nanotrain` with --scale tiny meaning the micro shape, on one thread.
MICRO_NANOTRAIN = (
    "import sys, torch; from nanotrain import recipes; from nanotrain.cli import main; torch.set_num_threads(1); "
    f"recipes.SCALE_MODEL['tiny'] = {MICRO_MODEL!r}; recipes.SCALE_TRAIN['tiny'] = {MICRO_TRAIN!r}; "
    "sys.exit(main(sys.argv[1:]))"
)
MICRO = Launcher(nanotrain=(sys.executable, "-c", MICRO_NANOTRAIN))

MINI = """\
[session]
name = "mini"
description = "two micro runs: a pauses after 2 steps per invocation; b continues a's final"

[[run]]
name = "a"
recipe = "engram-v1"
total_steps = 4
steps = 2

[[run]]
name = "b"
recipe = "engram-v2"
resume_from = "a"
total_steps = 6
rewarm_steps = 1

[score]
prompts = "seed"
samples_per_prompt = 1
max_new_tokens = 12
heldout_tokens = 512
temperature = 0.0
"""


def execute(session_file: Path, runs: Path, data: Path) -> tuple[dict, list[str]]:
    messages: list[str] = []
    plan = build_plan(load_session(session_file), [Slot(None)], "tiny")
    result = Runner(plan, runs, data, launcher=MICRO, progress=False, echo=messages.append, poll_s=0.1).execute()
    return result.status, messages


def summary_table(report: str) -> list[list[str]]:
    block = report.split("## Executive summary", 1)[1].strip().split("\n\n")[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]


def test_mini_session_pauses_continues_skips_and_reports(tmp_path, fixture_dataset, capsys):
    f = tmp_path / "mini.toml"
    f.write_text(MINI)
    runs = tmp_path / "runs"
    folder = runs / "mini"

    status, messages = execute(f, runs, fixture_dataset)
    assert status == {"a": "paused", "b": "blocked"}, messages
    assert (folder / "a" / "step_2").is_dir() and not (folder / "a" / "final").exists()
    assert not (folder / "b" / "final").exists() and not (folder / "a" / "score.json").exists()
    state = json.loads((folder / "session.json").read_text())
    assert state["runs"]["a"]["status"] == "paused" and state["runs"]["a"]["attempts"][0]["end_step"] == 2

    status, messages = execute(f, runs, fixture_dataset)
    assert status == {"a": "finished", "b": "finished"}, messages
    a_log = (folder / "a" / "train.log").read_text()
    assert "resumed from" in a_log and "step_2 at step 2" in a_log
    assert "--resume auto" in a_log
    b_log = (folder / "b" / "train.log").read_text()
    assert f"--resume {folder / 'a' / 'final'}" in b_log
    assert json.loads((folder / "b" / "final" / "config.json").read_text())["step"] == 6
    scores = {n: json.loads((folder / n / "score.json").read_text()) for n in ("a", "b")}
    assert scores["a"]["checkpoint"]["step"] == 4 and scores["b"]["checkpoint"]["step"] == 6
    assert scores["a"]["generation"]["n_samples"] == 15  # the 15 seed prompts x 1
    state = json.loads((folder / "session.json").read_text())
    assert [len(state["runs"][n]["attempts"]) for n in ("a", "b")] == [2, 1]
    assert state["runs"]["a"]["train_wall_s"] > 0

    headers = {n: (folder / n / "train.log").read_text().count("=== ") for n in ("a", "b")}
    score_mtime = (folder / "a" / "score.json").stat().st_mtime
    code = nanotrain_main(["session", str(f), "--scale", "tiny", "--runs", str(runs), "--data", str(fixture_dataset),
                           "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "a: final/ present, skipped" in out and "b: final/ present, skipped" in out
    assert {n: (folder / n / "train.log").read_text().count("=== ") for n in ("a", "b")} == headers
    assert (folder / "a" / "score.json").stat().st_mtime == score_mtime

    code = nanoeval_main(["report", "--session", str(folder), "--out", str(tmp_path / "report.md")])
    printed = capsys.readouterr().out
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    rows = summary_table(report)
    assert [r[0] for r in rows] == ["**a**", "**b**"]
    assert rows[0][2] == "4" and rows[1][2] == "4 → 6"
    for row, name in zip(rows, ("a", "b")):
        assert row[4].startswith(f"{scores[name]['heldout']['ce']:.4f}")
        assert row[5].startswith(f"{scores[name]['heldout']['bpb']:.4f}")
        assert row[6].startswith(f"{scores[name]['generation']['valid_rate']:.3f} [") and row[8] == "yes"
        last = [json.loads(x) for x in (folder / name / "metrics.jsonl").read_text().splitlines()]
        last = [x for x in last if x["kind"] == "train"][-1]
        assert row[3] == f"{last['loss']:.4f}"
        assert "Engram N-gram" in row[1]
    assert "| **a** |" in printed
    assert re.search(r"\*\*b resumed a\*\* at step 4 .* (a \*\*regression\*\*|an improvement)", report)
    assert "### a (" in report and "### b (" in report and "```rust" in report


def test_report_refuses_a_folder_that_is_not_a_session(tmp_path, capsys):
    code = nanoeval_main(["report", "--session", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not a session folder (no session.json)" in err and len(err.strip().splitlines()) == 1
    code = nanoeval_main(["report", "--session", str(tmp_path / "nope")])
    assert code == 2 and "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_seed_session_at_tiny_scale(tmp_path, capsys):
    """The four runs of sessions/seed.toml at the real tiny scale on the default dataset (`make session-tiny` takes
    about 31 minutes on an idle 2-core AMD EPYC VM; this test gives each run one thread, which takes longer)."""
    from nanotrain.data.default import ensure_default_dataset

    data = ensure_default_dataset()
    runs = tmp_path / "runs"
    code = nanotrain_main(["session", str(REPO / "sessions" / "seed.toml"), "--scale", "tiny", "--runs", str(runs),
                           "--data", str(data), "--threads", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().out[-3000:]
    folder = runs / "seed"
    for name in ("haar-v5", "engram-v1", "baseline-v1", "engram-v2"):
        assert (folder / name / "final").is_dir() and (folder / name / "score.json").is_file()
    assert nanoeval_main(["report", "--session", str(folder)]) == 0
    rows = summary_table((folder / "report.md").read_text())
    assert [r[0] for r in rows] == ["**haar-v5**", "**engram-v1**", "**baseline-v1**", "**engram-v2**"]
    assert rows[0][7].startswith("no") and rows[1][7] == "yes"
