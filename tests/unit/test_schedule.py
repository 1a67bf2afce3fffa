"""WSD schedule (docs/original-runs.md, "Schedule"): every logged LR of baseline-v1 and engram-v2 to 6 decimals."""

from __future__ import annotations

import math

import pytest

from nanotrain.config import TrainConfig
from nanotrain.optim.schedule import decay_start, lr_multiplier, rewarm, wsd

PEAK = 0.012

# (step, logged lr) transcribed from the original report's tables.
BASELINE_V1 = [(50, 0.000300), (500, 0.003000), (1000, 0.006000), (2000, 0.012000), (3000, 0.012000),
               (4000, 0.012000), (5000, 0.012000), (6000, 0.012000), (7000, 0.012000), (8000, 0.012000),
               (8500, 0.010418), (9000, 0.006600), (9400, 0.003426), (9700, 0.001789), (10000, 0.001200)]
ENGRAM_V2 = [(10050, 0.012000), (10500, 0.012000), (11000, 0.012000), (12000, 0.012000), (13000, 0.011896),
             (14000, 0.008666), (15000, 0.003600), (15650, 0.001516), (16000, 0.001200)]
# Rows the formula cannot reproduce at the stated step (docs/original-runs.md, "Schedule"): engram-v1 (w 1500,
# T 10000) and haar-v5 (w 1500, T 30000).
ENGRAM_V1_BAD = [(1500, 0.010800), (8000, 0.011851), (9000, 0.003426)]
HAAR_V5_BAD = [(24000, 0.011993), (25000, 0.010884), (26000, 0.008796), (27000, 0.006317), (28000, 0.003779),
               (29000, 0.001559)]


def cfg(warmup: int, total: int, **kw) -> TrainConfig:
    return TrainConfig(warmup_steps=warmup, total_steps=total, **kw)


@pytest.mark.parametrize("step,logged", BASELINE_V1)
def test_baseline_v1_logged_lr(step: int, logged: float) -> None:
    assert round(PEAK * wsd(step, cfg(2000, 10000)), 6) == pytest.approx(logged, abs=1e-9)


@pytest.mark.parametrize("step,logged", ENGRAM_V2)
def test_engram_v2_logged_lr(step: int, logged: float) -> None:
    assert round(PEAK * wsd(step, cfg(1500, 16000)), 6) == pytest.approx(logged, abs=1e-9)


def test_unreproducible_rows_differ() -> None:
    for rows, c in ((ENGRAM_V1_BAD, cfg(1500, 10000)), (HAAR_V5_BAD, cfg(1500, 30000))):
        for step, logged in rows:
            assert abs(PEAK * wsd(step, c) - logged) > 5e-6, (step, logged)


def test_shape_of_the_schedule() -> None:
    c = cfg(100, 1000, min_lr_ratio=0.1)
    assert wsd(0, c) == 0.0
    assert wsd(50, c) == 0.5
    assert decay_start(c) == 800
    assert wsd(100, c) == 1.0 and wsd(799, c) == 1.0 and wsd(800, c) == 1.0
    assert wsd(900, c) == pytest.approx(0.55)
    assert wsd(1000, c) == pytest.approx(0.1) and wsd(5000, c) == pytest.approx(0.1)
    values = [wsd(s, c) for s in range(1200)]
    assert all(a <= b for a, b in zip(values[:100], values[1:101]))        # warmup rises
    assert all(a >= b for a, b in zip(values[800:], values[801:]))         # decay falls
    assert wsd(10, cfg(0, 100)) == 1.0                                     # no warmup


def test_decay_frac_and_min_ratio() -> None:
    c = cfg(10, 1000, decay_frac=0.5, min_lr_ratio=0.0)
    assert decay_start(c) == 500
    assert wsd(499, c) == 1.0
    assert wsd(750, c) == pytest.approx(0.5)
    assert wsd(1000, c) == pytest.approx(0.0, abs=1e-12)
    assert wsd(750, cfg(10, 1000, decay_frac=0.5, min_lr_ratio=0.2)) == pytest.approx(0.2 + 0.4)


def test_rewarm_ramps_from_the_stopped_lr_to_the_schedule() -> None:
    # engram-v2: engram-v1 stopped at step 10000 with multiplier 0.1; the extended schedule says 1.0 there.
    c = cfg(1500, 16000, rewarm_steps=200)
    assert rewarm(10000, 10000, 0.1, c) == pytest.approx(0.1)
    assert rewarm(10100, 10000, 0.1, c) == pytest.approx(0.55)
    assert rewarm(10200, 10000, 0.1, c) == 1.0
    ramp = [rewarm(s, 10000, 0.1, c) for s in range(10000, 10201)]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    assert max(abs(b - a) for a, b in zip(ramp, ramp[1:])) < 0.0046
    # the seed's "jump" goes straight to the schedule; a fresh run ignores the resume arguments
    assert lr_multiplier(10000, cfg(1500, 16000, resume_lr="jump"), 10000, 0.1) == 1.0
    assert lr_multiplier(10000, c, 10000, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(10000, c) == 1.0
    assert rewarm(10050, 10000, 0.1, cfg(1500, 16000, rewarm_steps=0)) == 1.0


def test_rewarm_follows_a_moving_target() -> None:
    # resuming inside the decay: the ramp ends exactly on the (falling) schedule
    c = cfg(100, 1000, rewarm_steps=100)
    assert rewarm(900, 850, 0.2, c) == pytest.approx(0.2 + 0.5 * (wsd(900, c) - 0.2))
    assert rewarm(950, 850, 0.2, c) == wsd(950, c)
    assert math.isclose(rewarm(851, 850, wsd(850, c), c), wsd(851, c), rel_tol=0.01)


def test_lr_multiplier_errors() -> None:
    with pytest.raises(ValueError, match="start_mult"):
        lr_multiplier(5, cfg(1, 10), resume_step=3)
    with pytest.raises(ValueError, match="resume_lr"):
        lr_multiplier(5, cfg(1, 10, resume_lr="bogus"), resume_step=3, start_mult=0.1)


# ---- `nanotrain schedule` (real recipes from nanotrain.recipes)

def _table(out: str) -> dict[int, tuple[str, float, float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            rows[int(parts[0])] = (parts[1], float(parts[3]), float(parts[4]))
    return rows


def test_cli_prints_the_recipe_schedule(capsys) -> None:
    from nanotrain.cli import main

    assert main(["schedule", "baseline-v1", "--at"] + [str(s) for s, _ in BASELINE_V1]) == 0
    rows = _table(capsys.readouterr().out)
    assert sorted(rows) == [s for s, _ in BASELINE_V1]
    for step, logged in BASELINE_V1:
        phase, muon_lr, lion_lr = rows[step]
        assert muon_lr == pytest.approx(logged, abs=1e-9)
        assert lion_lr == pytest.approx(logged / 0.012 * 1e-4, rel=1e-3)
    assert rows[50][0] == "warmup" and rows[3000][0] == "stable" and rows[9000][0] == "decay"


def test_cli_shows_the_rewarm_of_a_resumed_recipe(capsys) -> None:
    from nanotrain.cli import main

    assert main(["schedule", "engram-v2"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert min(rows) == 10000 and max(rows) == 16000
    assert rows[10000] == ("rewarm", pytest.approx(0.0012), pytest.approx(1e-5))
    assert rows[10200][0] == "stable" and rows[10200][1] == pytest.approx(0.012)
    assert rows[13000][1] == pytest.approx(0.011896)
    assert "engram-v1" in out
    assert main(["schedule", "engram-v2", "--at", "5000", "--total-steps", "20000", "--warmup", "100"]) == 0
    assert _table(capsys.readouterr().out)[5000] == ("engram-v1", pytest.approx(0.012), pytest.approx(1e-4))


def test_cli_every_and_overrides(capsys) -> None:
    from nanotrain.cli import main

    assert main(["schedule", "engram-v1", "--every", "3000", "--total-steps", "10000", "--warmup", "1000"]) == 0
    rows = _table(capsys.readouterr().out)
    assert sorted(rows) == [0, 3000, 6000, 9000, 10000]
    assert rows[9000][1] == pytest.approx(0.0066)


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_cli_scale_shows_that_scales_schedule(capsys, scale) -> None:
    """--scale tiny|small prints the schedule `nanotrain run --scale` trains with, not the full one."""
    from nanotrain.cli import main
    from nanotrain.recipes import get_recipe

    _, cfg = get_recipe("engram-v1").build(scale)
    assert main(["schedule", "engram-v1", "--scale", scale]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert f"({scale} scale): warmup {cfg.warmup_steps}, total {cfg.total_steps}" in out
    assert max(rows) == cfg.total_steps < 10000 and cfg.warmup_steps in rows
    assert rows[cfg.warmup_steps] == ("stable", pytest.approx(cfg.lr), pytest.approx(cfg.lion_lr, rel=1e-3))
    assert main(["schedule", "engram-v2", "--scale", scale]) == 0  # continues engram-v1 at the same scale
    assert min(_table(capsys.readouterr().out)) == cfg.total_steps


@pytest.mark.parametrize("argv,msg", [
    (["schedule", "no-such-recipe"], "unknown recipe"),
    (["schedule", "engram-v1", "--every", "0"], "--every"),
    (["schedule", "engram-v1", "--at", "-5"], "--at"),
    (["schedule", "engram-v1", "--total-steps", "0"], "--total-steps"),
    (["schedule", "engram-v1", "--plot", "lr.txt"], "--plot"),
    (["schedule", "engram-v1", "--plot", "/no/such/folder/lr.png"], "does not exist"),
])
def test_cli_user_errors(capsys, argv: list[str], msg: str) -> None:
    from nanotrain.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_cli_plot_writes_an_image(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from nanotrain.cli import main

    out = tmp_path / "lr.png"
    assert main(["schedule", "engram-v2", "--at", "12000", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lr.png"]


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch) -> None:
    import sys

    from nanotrain.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)   # makes `import matplotlib` raise ImportError
    assert main(["schedule", "engram-v1", "--plot", str(tmp_path / "lr.png")]) == 2
    err = capsys.readouterr()
    assert err.err.strip().splitlines() == ["nanotrain: error: --plot needs the optional package matplotlib: "
                                            "pip install 'nanolab[plot]'"] and err.out == ""
    assert not any(tmp_path.iterdir())
