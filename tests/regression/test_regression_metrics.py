"""Metrics of reference checkpoints against goldens.json (regenerate: `python -m tests.regression.regenerate`).

Each recipe is trained at the micro shape on the committed corpus (fp32, CPU, one thread, seed 0) with
`nanotrain run` and scored with `nanoeval score` (greedy, seed 0). Losses must agree within spec.FLOAT_TOL
(1e-3 for CE, bpb, entropy and the last train loss); greedy-decoding facts (rates, token counts, the
hash of every prompt+completion) must agree exactly. The default run covers the seed's two compared runs and the
recipes with their own code paths (resume, causal wavefield, looped blocks); the rest run with `-m slow`.
"""

from __future__ import annotations

import pytest

from . import spec

DEFAULT = ("baseline-v1", "engram-v1", "engram-v2", "haar-causal", "looplm")


def _param(recipe: str):
    return pytest.param(recipe, marks=() if recipe in DEFAULT else pytest.mark.slow, id=recipe)


@pytest.mark.parametrize("recipe", [_param(r) for r in spec.RECIPES])
def test_recipe_metrics_match_goldens(recipe, measure):
    golden = spec.load_goldens()
    assert recipe in golden, f"no golden for {recipe}: run `python -m tests.regression.regenerate --write`"
    problems = spec.compare(golden[recipe], measure(recipe))
    assert not problems, (f"{recipe} drifted from tests/regression/goldens.json (if intended, run "
                          "`python -m tests.regression.regenerate` and commit with --write):\n  "
                          + "\n  ".join(problems))


def test_goldens_hold_every_recipe_and_field():
    golden = spec.load_goldens()
    assert sorted(golden) == sorted(spec.RECIPES)
    fields = set(spec.FLOAT_TOL) | set(spec.EXACT)
    for recipe, metrics in golden.items():
        assert set(metrics) == fields, recipe
        assert 0.0 <= metrics["valid_rate"] <= 1.0 and 0.0 <= metrics["bracket_balance"] <= 1.0
        assert metrics["gen_tokens"] > 0 and metrics["heldout_tokens"] > 0


def test_engram_v2_golden_continues_engram_v1():
    """engram-v2 resumes engram-v1's final and trains further: its held-out CE must be lower."""
    golden = spec.load_goldens()
    assert golden["engram-v2"]["val_ce"] < golden["engram-v1"]["val_ce"]
    assert golden["engram-v2"]["params"] == golden["engram-v1"]["params"]


def test_compare_flags_drift_beyond_tolerance_only():
    base = spec.load_goldens()["engram-v1"]
    assert spec.compare(base, dict(base)) == []
    within = {**base, "val_ce": base["val_ce"] + 0.5 * spec.FLOAT_TOL["val_ce"]}
    assert spec.compare(base, within) == []
    beyond = {**base, "val_ce": base["val_ce"] + 2 * spec.FLOAT_TOL["val_ce"]}
    assert [p.split(":")[0] for p in spec.compare(base, beyond)] == ["val_ce"]
    assert [p.split(":")[0] for p in spec.compare(base, {**base, "val_bpb": float("nan")})] == ["val_bpb"]
    changed_text = {**base, "texts_sha256": "0" * 64, "valid_rate": base["valid_rate"] - 1e-9}
    assert sorted(p.split(":")[0] for p in spec.compare(base, changed_text)) == ["texts_sha256", "valid_rate"]
    missing = {k: v for k, v in base.items() if k != "distinct_3"}
    assert [p.split(":")[0] for p in spec.compare(base, missing)] == ["distinct_3"]


def test_regenerate_shows_the_diff_and_writes_only_with_write(monkeypatch, tmp_path, measure, capsys):
    """`python -m tests.regression.regenerate`: diff only by default (exit 1 on a difference), --write accepts."""
    import json
    import shutil

    from . import regenerate

    drifted = {**measure("engram-v1"), "val_ce": measure("engram-v1")["val_ce"] + 0.01}
    monkeypatch.setattr(spec, "measure_all", lambda work, recipes, progress=False: {"engram-v1": drifted})
    for name in ("GOLDENS", "CKPT_V1_PINNED"):
        copy = tmp_path / getattr(spec, name).name
        shutil.copy(getattr(spec, name), copy)
        monkeypatch.setattr(spec, name, copy)
    before = spec.GOLDENS.read_bytes()

    assert regenerate.main(["--recipes", "engram-v1"]) == 1
    out = capsys.readouterr().out
    assert f"engram-v1: val_ce: golden {json.loads(before)['engram-v1']['val_ce']}, measured {drifted['val_ce']}" in out
    assert "ckpt_v1" not in out  # the committed checkpoint still behaves as pinned
    assert spec.GOLDENS.read_bytes() == before

    assert regenerate.main(["--recipes", "engram-v1", "--write"]) == 0
    written = json.loads(spec.GOLDENS.read_text())
    assert written["engram-v1"] == drifted and written["looplm"] == json.loads(before)["looplm"]
    assert regenerate.main(["--recipes", "engram-v1"]) == 0
    assert "no differences beyond the stated tolerances" in capsys.readouterr().out


def test_regenerate_refuses_unknown_recipes(capsys):
    from . import regenerate

    with pytest.raises(SystemExit) as info:
        regenerate.main(["--recipes", "engram-v9"])
    assert info.value.code == 2 and "unknown engram-v9" in capsys.readouterr().err
