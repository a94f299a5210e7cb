"""Slopes of the errors against dimension and sample size, with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LineFit:
    """Ordinary least squares ``y = intercept + slope x`` with a two-sided CI on the slope."""

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    stderr: float
    points: int
    #: mean of the fitted ``y`` (the scale a slope is judged relative to)
    y_mean: float = float("nan")


def fit_line(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> LineFit:
    """OLS fit with a Student-t confidence interval for the slope (needs >= 3 distinct x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 2 or len(x) < 3:
        nan = float("nan")
        return LineFit(nan, nan, nan, nan, nan, len(x), float(np.mean(y)) if len(y) else nan)
    xc = x - x.mean()
    slope = float(xc @ (y - y.mean()) / (xc @ xc))
    intercept = float(y.mean() - slope * x.mean())
    resid = y - intercept - slope * x
    stderr = float(math.sqrt(resid @ resid / (len(x) - 2) / (xc @ xc)))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 2)) * stderr
    return LineFit(slope, intercept, slope - half, slope + half, stderr, len(x), float(y.mean()))


def cell_means(columns: dict[str, np.ndarray], value: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of ``value`` over replicates in each (dimension, sample size) cell."""
    cells, inverse = np.unique(
        np.stack([columns["dim"], columns["n"]], 1), axis=0, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    mean = np.bincount(inverse, weights=value) / np.bincount(inverse)
    return {"dim": cells[:, 0], "n": cells[:, 1], "mean": mean}


def dimension_slope(columns: dict[str, np.ndarray], err_key: str, confidence: float) -> LineFit:
    """Slope of the sqrt(n)-scaled error (cell means) against log10(dimension), all n pooled."""
    cm = cell_means(columns, columns[err_key] * np.sqrt(columns["n"]))
    return fit_line(np.log10(cm["dim"]), cm["mean"], confidence)


def sample_size_slope(columns: dict[str, np.ndarray], err_key: str, confidence: float) -> LineFit:
    """Slope of log10(mean error) (cell means) against log10(n), all dimensions pooled."""
    cm = cell_means(columns, columns[err_key])
    keep = cm["mean"] > 0
    return fit_line(np.log10(cm["n"][keep]), np.log10(cm["mean"][keep]), confidence)


ERROR_KEYS = (
    "err_ddpm_true",
    "err_ddpm_mle",
    "err_mle_true",
    "err_label_true",
    "err_ddpm_est_true",
    "err_mle_est_true",
)


def fit_slopes(columns: dict[str, np.ndarray], confidence: float = 0.95) -> dict[str, LineFit]:
    """Dimension and sample-size slopes for every error column: ``{"dim:err_..": fit, ...}``."""
    fits = {}
    for key in (k for k in ERROR_KEYS if k in columns):
        fits[f"dim:{key}"] = dimension_slope(columns, key, confidence)
        fits[f"n:{key}"] = sample_size_slope(columns, key, confidence)
    return fits
