"""`nanoeval.stats`: the intervals and paired tests behind every reported number."""

from __future__ import annotations

import pytest

from nanoeval import stats


def test_wilson_matches_the_closed_form_and_stays_inside_0_1():
    lo, hi = stats.wilson(54, 270)  # a valid rate of 0.2 over the default 270 samples
    assert lo == pytest.approx(0.1566, abs=1e-4) and hi == pytest.approx(0.2518, abs=1e-4)
    assert (hi - lo) / 2 <= 0.05
    assert stats.wilson(0, 30)[0] == 0.0 and stats.wilson(0, 30)[1] > 0.1  # no collapse at a rate of 0
    assert stats.wilson(30, 30)[1] == 1.0 and stats.wilson(0, 0) is None
    assert stats.rate_interval([True, None, False, True]) == stats.wilson(2, 3)


def test_bootstraps_are_seeded_and_cover_the_estimate():
    values = [0.1 * (i % 7) for i in range(50)]
    assert stats.bootstrap_mean(values) == stats.bootstrap_mean(values)
    lo, hi = stats.bootstrap_mean(values)
    assert lo < sum(values) / len(values) < hi
    assert stats.bootstrap_mean([1.0]) is None
    num, den = [10.0, 30.0, 5.0, 20.0], [5, 10, 5, 10]
    lo, hi = stats.bootstrap_ratio(num, den)
    assert lo <= sum(num) / sum(den) <= hi and lo < hi


def test_paired_differences_and_verdicts():
    a = [1.0 if i % 2 else 0.0 for i in range(200)]
    diff, ci = stats.paired_mean_diff(a, [0.0] * 200)
    assert diff == 0.5 and ci[0] > 0 and stats.verdict("a", "b", ci, higher_is_better=True) == "a"
    assert stats.verdict("a", "b", ci, higher_is_better=False) == "b"
    diff, ci = stats.paired_mean_diff(a, a[1:] + a[:1])
    assert diff == 0 and stats.verdict("a", "b", ci, True) == "not distinguishable"
    # The same documents: a constant shift of 0.1 nats per token is found however noisy the documents are.
    den = [10 + (i * 7) % 13 for i in range(30)]
    nll_b = [d * (2.0 + (i % 5)) for i, d in enumerate(den)]
    nll_a = [x + 0.1 * d for x, d in zip(nll_b, den)]
    diff, ci = stats.paired_ratio_diff(nll_a, nll_b, den)
    assert diff == pytest.approx(0.1) and ci[0] == pytest.approx(0.1) and ci[1] == pytest.approx(0.1)
    assert stats.verdict("a", "b", ci, higher_is_better=False) == "b"
    assert stats.verdict("a", "b", None, True).startswith("not distinguishable")
