"""benchmarks/bench_rustc_agreement.py on the disagreement fixtures: the numbers it reports are the verdicts'."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_rustc_agreement import corrupt, main, truncate  # noqa: E402
from tests.unit.test_rustc import CLASSES, FIX  # noqa: E402


def test_agreement_on_the_fixtures(rustc, tmp_path, capsys):
    out = tmp_path / "agreement.json"
    assert main(["--all", "--sources", str(FIX), "--rustc", rustc.path, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    as_is = r["conditions"][0]
    assert r["n_files"] == len(CLASSES) and as_is["condition"] == "as is"
    differ = sum(a != b for a, b in CLASSES.values())
    assert as_is["agreement"] == pytest.approx(1 - differ / len(CLASSES))
    assert as_is["rustc_only_valid"] == sum(a and not b for a, b in CLASSES.values())
    # without the item checks tree-sitter also accepts the six files with statements or dangling attributes/docs
    assert as_is["agreement_plain"] == pytest.approx(1 - (differ + 6) / len(CLASSES))
    assert [c["condition"] for c in r["conditions"]] == ["as is", "cut", "corrupted"]
    assert all(c["n"] == len(CLASSES) and c["rustc_files_per_s"] > 0 for c in r["conditions"])


def test_cuts_and_corruptions_are_seeded_and_change_the_text():
    import random

    text = (FIX / "valid_items.rs").read_text()
    a, b = random.Random(3), random.Random(3)
    assert [truncate(a, text) for _ in range(5)] == [truncate(b, text) for _ in range(5)]
    cuts = [truncate(a, text) for _ in range(20)]
    assert all(0 < len(c) < len(text) and text.startswith(c) for c in cuts)
    assert all(corrupt(a, text) != text for _ in range(20))
