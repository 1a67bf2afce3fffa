"""Intervals and paired tests for the numbers of score reports. Seeded: the same inputs give the same intervals.

- A rate of yes/no verdicts over samples (valid rate, compile rate): the Wilson score interval (exact enough at
  a few hundred samples, and sensible at rates of 0 or 1, where a bootstrap collapses to a point).
- A mean of per-sample values (bracket balance, error density, distinct-3): a percentile bootstrap over samples.
- Held-out CE and bits/byte: a percentile bootstrap over documents (the files of the split). A document's summed
  NLL and token count are resampled together and CE is the ratio of the sums, so long files weigh what their
  tokens weigh and the tokens of one file, which are not independent, move together.
- The difference between two reports: a paired bootstrap, resampling the same indices for both: the same
  documents for CE/bpb, the same samples (same prompts in the same order) for the generation metrics. A winner is
  named only when the 95% interval of the difference excludes zero; otherwise the two are not distinguishable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0


def _quantiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """Wilson score interval of a rate `successes / n` (None for n = 0)."""
    if n <= 0:
        return None
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_interval(verdicts: Sequence) -> tuple[float, float] | None:
    """Wilson interval of the share of true `verdicts` (None entries are left out)."""
    values = [bool(v) for v in verdicts if v is not None]
    return wilson(sum(values), len(values))


def bootstrap_mean(values: Sequence, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                   level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-sample `values` (None entries left out; None for < 2)."""
    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    return _quantiles(x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1), level)


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                    level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of sum(num) / sum(den), resampling (num, den) pairs (documents)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(a) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    return _quantiles(a[idx].sum(axis=1) / b[idx].sum(axis=1), level)


def paired_mean_diff(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> tuple[float, tuple[float, float] | None]:
    """mean(a) - mean(b) over paired samples (index i of both: the same prompt) and its paired bootstrap interval.
    A pair with None on either side is left out."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return float("nan"), None
    d = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), None
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_resamples, len(d)))
    return float(d.mean()), _quantiles(d[idx].mean(axis=1), level)


def paired_ratio_diff(num_a: Sequence[float], num_b: Sequence[float], den: Sequence[float],
                      n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> tuple[float, tuple[float, float] | None]:
    """sum(num_a)/sum(den) - sum(num_b)/sum(den) over the same documents and its paired bootstrap interval."""
    a, b, n = (np.asarray(v, dtype=np.float64) for v in (num_a, num_b, den))
    diff = float(a.sum() / n.sum() - b.sum() / n.sum())
    if len(n) < 2:
        return diff, None
    idx = np.random.default_rng(seed).integers(0, len(n), size=(n_resamples, len(n)))
    tot = n[idx].sum(axis=1)
    return diff, _quantiles(a[idx].sum(axis=1) / tot - b[idx].sum(axis=1) / tot, level)


def independent_mean_diff(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                          level: float = LEVEL) -> tuple[float, tuple[float, float] | None]:
    """mean(a) - mean(b) of unpaired samples, with each side resampled on its own (for reports whose samples do
    not pair up: different prompts or counts)."""
    x = np.asarray([float(v) for v in a if v is not None], dtype=np.float64)
    y = np.asarray([float(v) for v in b if v is not None], dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        return float("nan"), None
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, None
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    my = y[rng.integers(0, len(y), size=(n_resamples, len(y)))].mean(axis=1)
    return diff, _quantiles(mx - my, level)


def verdict(name_a: str, name_b: str, ci: tuple[float, float] | None, higher_is_better: bool) -> str:
    """Who wins a difference a - b with interval `ci`: a name when the interval excludes zero, else
    'not distinguishable'."""
    if ci is None:
        return "not distinguishable (too few samples or documents to test)"
    lo, hi = ci
    if lo > 0:
        return name_a if higher_is_better else name_b
    if hi < 0:
        return name_b if higher_is_better else name_a
    return "not distinguishable"
