"""`nanoeval report --session`: the seed session's four runs (real micro checkpoints from the trainer, scored by the
real `nanoeval score`) laid out as `nanotrain session` leaves them, and a report whose table and findings follow
the numbers in those files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from nanoeval.cli import main as nanoeval_main
from nanoeval.session_report import build_report
from nanotrain.session import Slot, State, build_plan, load_session

REPO = Path(__file__).resolve().parents[2]
RUNS = ("haar-v5", "engram-v1", "baseline-v1", "engram-v2")


def last_train(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"][-1]


def summary(report: str) -> dict[str, list[str]]:
    block = report.split("## Executive summary", 1)[1].strip().split("\n\n")[0].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]
    return {r[0].strip("*"): r for r in rows}


@pytest.fixture(scope="module")
def seed_session(tmp_path_factory, tiny_checkpoint_factory, fixture_dataset) -> Path:
    """runs/seed as `nanotrain session` leaves it: the four run folders, session.json, and a score.json each."""
    folder = tmp_path_factory.mktemp("runs") / "seed"
    plan = build_plan(load_session(REPO / "sessions" / "seed.toml"), [Slot(None)], "tiny")
    for name in RUNS:
        shutil.copytree(tiny_checkpoint_factory(name).parent, folder / name)
    state = State(plan, folder, fixture_dataset)
    for name in RUNS:
        state.run(name)["status"] = "finished"
        state.run(name)["train_wall_s"] = 1.5
    state.save()
    for name in RUNS:
        code = nanoeval_main(["score", "--ckpt", str(folder / name / "final"), "--out",
                              str(folder / name / "score.json"), "--data", str(fixture_dataset), "--inference-mode",
                              "bypass", "--prompts", "seed", "--samples-per-prompt", "1", "--max-new-tokens", "8",
                              "--heldout-tokens", "512", "--temperature", "0"])
        assert code == 0
    return folder


def test_summary_table_follows_the_files(seed_session, capsys):
    out = seed_session / "report.md"
    assert nanoeval_main(["report", "--session", str(seed_session)]) == 0
    assert "| **engram-v2** |" in capsys.readouterr().out
    report = out.read_text()
    rows = summary(report)
    assert list(rows) == list(RUNS)
    for name in RUNS:
        score = json.loads((seed_session / name / "score.json").read_text())
        row = rows[name]
        assert row[3] == f"{last_train(seed_session / name)['loss']:.4f}"
        h, g = score["heldout"], score["generation"]
        ce_ci = "" if h["ce_ci"] is None else f" [{h['ce_ci'][0]:.3f}, {h['ce_ci'][1]:.3f}]"
        assert row[4] == f"{h['ce']:.4f}{ce_ci}" and row[5].startswith(f"{h['bpb']:.4f}")
        lo, hi = g["intervals"]["valid_rate"]
        assert row[6] == f"{g['valid_rate']:.3f} [{lo:.2f}, {hi:.2f}]" and row[7] == "15"
    haar_layers = json.loads((seed_session / "haar-v5" / "score.json").read_text())["model"]["noncausal_layers"]
    assert haar_layers and rows["haar-v5"][8] == f"no ({len(haar_layers)} layers bypassed)"
    assert rows["engram-v1"][8] == "yes"
    assert "Wavefield Haar bidirectional" in rows["haar-v5"][1] and "MTP x3" in rows["baseline-v1"][1]
    assert rows["engram-v2"][2] == f"{last_train(seed_session / 'engram-v1')['step']} → " \
                                   f"{last_train(seed_session / 'engram-v2')['step']}"
    for name in RUNS:
        assert f"### {name} (" in report
    assert report.count("```rust") == 4


def test_findings_are_computed_from_the_numbers(seed_session):
    report = build_report(seed_session)
    haar = json.loads((seed_session / "haar-v5" / "score.json").read_text())["heldout"]
    noncausal = next(line for line in report.splitlines() if "**haar-v5 is not causal**" in line)
    assert f"held-out CE is {haar['ce']:.4f}" in noncausal and f"against {haar['train_mode_ce']:.4f}" in noncausal

    base = last_train(seed_session / "baseline-v1")
    mtp = next(line for line in report.splitlines() if "inflated by MTP" in line)
    assert f"loss − CE = {base['loss'] - base['ce']:.4f}" in mtp
    plain = [last_train(seed_session / n) for n in ("haar-v5", "engram-v1", "engram-v2")]
    assert f"show loss − CE = {sum(r['loss'] - r['ce'] for r in plain) / 3:.4f}" in mtp

    parent, child = last_train(seed_session / "engram-v1"), last_train(seed_session / "engram-v2")
    resumed = next(line for line in report.splitlines() if "**engram-v2 resumed engram-v1**" in line)
    verdict = "a **regression**" if child["loss"] > parent["loss"] else "an improvement"
    assert f"{verdict} ({child['loss'] - parent['loss']:+.4f})" in resumed


def test_pairwise_verdicts_name_a_winner_only_when_the_interval_excludes_zero(seed_session):
    report = build_report(seed_session)
    pairs = [line for line in report.splitlines()
             if re.match(r"^\| [\w.-]+ vs [\w.-]+ \|", line) and not line.startswith("| A vs B")]
    assert len(pairs) == 6  # every pair of the four scored runs
    for line in pairs:
        for cell in line.split("|")[2:-1]:
            cell = cell.strip()
            if cell.startswith("not comparable") or cell == "-":
                continue
            if "[" not in cell:  # one document or sample: no interval, so no winner
                assert cell.endswith(": not distinguishable (too few samples or documents to test)"), cell
                continue
            m = re.match(r"^([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]: (.+)$", cell)
            assert m, cell
            lo, hi, who = float(m[2]), float(m[3]), m[4]
            assert (who == "not distinguishable") == (lo <= 0 <= hi), cell
    rate = next(line for line in report.splitlines() if "tree-sitter valid rate" in line.lower())
    assert "paired over the same prompts" in rate and "over 15 samples" in rate


def test_a_resumed_run_that_ends_worse_is_a_regression(seed_session, tmp_path):
    folder = tmp_path / "seed"
    shutil.copytree(seed_session, folder)
    parent = last_train(folder / "engram-v1")
    for loss, verdict in ((parent["loss"] + 0.5, "a **regression** (+0.5000)"),
                          (parent["loss"] - 0.25, "an improvement (-0.2500)")):
        path = folder / "engram-v2" / "metrics.jsonl"
        row = {**last_train(seed_session / "engram-v2"), "loss": loss}
        path.write_text((seed_session / "engram-v2" / "metrics.jsonl").read_text() + json.dumps(row) + "\n")
        resumed = next(line for line in build_report(folder).splitlines() if "**engram-v2 resumed" in line)
        assert verdict in resumed, resumed


def test_progression_rows_are_logged_steps_at_the_originals_fractions(seed_session):
    report = build_report(seed_session)
    section = report.split("### engram-v1 (", 1)[1].split("###", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if re.match(r"^\| \d", line)]
    logged = {r["step"]: r for r in (json.loads(x) for x in (seed_session / "engram-v1" / "metrics.jsonl")
                                     .read_text().splitlines()) if r["kind"] == "train"}
    assert rows, section
    for cells in rows:
        step = int(cells[0])
        assert step in logged and cells[2].strip() == f"{logged[step]['loss']:.4f}"
    steps = [int(c[0]) for c in rows]
    assert steps == sorted(set(steps)) and steps[-1] == max(logged)
