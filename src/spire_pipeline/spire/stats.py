"""Paired comparisons over clients: a bootstrap confidence interval and a three-way verdict.

A claim compares two methods on the same clients: per client the difference of their KIDs,
summarised by the median, with a percentile bootstrap CI over clients. With few clients the
bootstrap distribution is enumerated exactly (every one of the ``n**n`` resamples), otherwise
it is drawn from a seeded generator. A verdict is ``holds``, ``fails`` or ``inconclusive``: a
rule that cannot come out both ways is not a verdict.

The percentile bootstrap of a median never leaves ``[min, max]`` of the values, so with very
few clients it would call three clients that agree "significant". No distribution-free interval
for a median reaches ``confidence`` with fewer than :func:`min_clients` values (even
``[min, max]`` covers it only with probability ``1 - 2 / 2**n``): below that the interval is
``(-inf, +inf)`` and every verdict built on it is ``inconclusive``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["holds", "fails", "inconclusive"]
#: resample counts up to which the bootstrap is enumerated exactly (n = 6: 46,656 resamples)
EXACT_MAX_RESAMPLES = 50_000


@dataclass(frozen=True)
class Interval:
    """A statistic of paired differences with its bootstrap CI, over ``n`` clients."""

    effect: float
    ci_low: float
    ci_high: float
    n: int

    def above(self, threshold: float) -> bool:
        """The whole CI lies above ``threshold``."""
        return bool(self.ci_low > threshold)

    def below(self, threshold: float) -> bool:
        """The whole CI lies below ``threshold``."""
        return bool(self.ci_high < threshold)

    def within(self, low: float, high: float) -> bool:
        """The whole CI lies inside ``[low, high]`` (equivalence)."""
        return bool(low <= self.ci_low and self.ci_high <= high)


def min_clients(confidence: float = 0.95) -> int:
    """The fewest values whose ``[min, max]`` covers the median with ``confidence`` (6 at 95 %)."""
    n = 1
    while 1.0 - 2.0 * 0.5**n < confidence:
        n += 1
    return n


def _resample_indices(n: int, num: int, seed: int) -> np.ndarray:
    if n**n <= EXACT_MAX_RESAMPLES:
        return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(num, n))


def bootstrap(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = np.median,
    confidence: float = 0.95,
    num: int = 10_000,
    seed: int = 0,
) -> Interval:
    """``statistic`` of ``values`` (one per client) with a percentile bootstrap CI.

    Non-finite values (a diverged run: +inf is a legitimate "worst") are kept; NaN is not
    allowed. ``statistic`` must accept ``axis=-1``. With fewer than :func:`min_clients` values
    the CI is ``(-inf, +inf)``.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, 0)
    if np.isnan(x).any():
        raise ValueError("bootstrap: values hold NaN (drop or resolve missing clients first)")
    if x.size < min_clients(confidence):
        return Interval(float(statistic(x, axis=-1)), -np.inf, np.inf, int(x.size))
    idx = _resample_indices(x.size, num, seed)
    stats = np.sort(statistic(x[idx], axis=-1))
    tail = (1.0 - confidence) / 2.0
    low = float(np.quantile(stats, tail, method="inverted_cdf"))
    high = float(np.quantile(stats, 1.0 - tail, method="inverted_cdf"))
    return Interval(float(statistic(x, axis=-1)), low, high, int(x.size))


def paired(
    a: dict[str, float],
    b: dict[str, float],
    confidence: float = 0.95,
    num: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Median over the clients both have of ``a[c] - b[c]``, with its bootstrap CI."""
    common = sorted(set(a) & set(b))
    diff = np.array([a[c] - b[c] for c in common], dtype=float)
    return bootstrap(diff, confidence=confidence, num=num, seed=seed)


def three_way(holds: bool, fails: bool) -> Verdict:
    """``holds`` / ``fails`` from two mutually exclusive rules, ``inconclusive`` otherwise."""
    if holds and fails:
        raise ValueError("a verdict's rules must not both apply")
    return "holds" if holds else "fails" if fails else "inconclusive"
