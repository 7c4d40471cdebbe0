"""Uncertainty of the evaluation's numbers.

- `bootstrap_fvd`: a confidence interval for an FVD by resampling the stored feature rows of each
  set with replacement (the sets independently). Resampling repeats rows, which shrinks each set's
  spread, so bootstrap FVDs sit above the point estimate (at small N, all of them). The interval is
  therefore the percentile interval of the draws shifted by their median bias (median of draws minus
  the estimate), clipped at 0: it states how much the number moves with the sample, around it.
- `wilson`: the Wilson score interval of a share (win shares of the alignment proxy and of the
  human study), which behaves at 0 and 1 where the normal approximation does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.eval.fvd import fvd


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    level: float


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = 0.95) -> Interval | None:
    """Share successes/n with its Wilson score interval; None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} not in [0, {n}]")
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, level)


def bootstrap_fvd(a: np.ndarray, b: np.ndarray, reps: int, level: float = 0.95, seed: int = 0) -> Interval:
    """FVD(a, b) with a percentile bootstrap interval over `reps` resamples (reps 0: no interval)."""
    value = fvd(a, b)
    if reps <= 0:
        return Interval(value, value, value, level)
    rng = np.random.default_rng(seed)
    draws = np.empty(reps)
    for i in range(reps):
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        draws[i] = fvd(a[ia], b[ib])
    tail = (1 - level) / 2
    shifted = draws - (np.median(draws) - value)
    low, high = np.quantile(shifted, [tail, 1 - tail])
    return Interval(value, max(0.0, float(low)), float(high), level)
