"""Kernel Inception Distance (KID) on precomputed image features.

KID is the unbiased estimate of the squared maximum mean discrepancy (MMD^2) between two feature
sets under the cubic polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``, averaged over random
subsets. The formula is exactly clean-fid's ``cleanfid.fid.kernel_distance`` (same subset size,
same draw order: a subset of ``features_b`` first, then one of ``features_a``), but the subsets come
from a seeded ``np.random.default_rng(seed)`` instead of the global numpy state, and the standard
deviation over subsets is returned too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kid"]

# Up to this many samples per side the three kernel matrices are computed once on the full sets
# (at most 3 x 2048^2 float64 = 100 MB) and the subsets only index them; above it, each subset
# computes its own kernels, as clean-fid does. Both give the same numbers.
_FULL_GRAM_MAX = 2048


def _as_features(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (samples, feature_dim), got shape {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise ValueError(f"KID needs at least 2 samples per set; {name} has {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimensions (shape {arr.shape})")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} holds NaN or infinite values (in {bad} of {arr.shape[0]} rows)")
    return arr


def _mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray, m: int) -> float:
    """clean-fid's per-subset term, divided by ``m``: the unbiased MMD^2 of one subset pair."""
    a_sum = k_xx.sum() + k_yy.sum()
    a_diag = np.trace(k_xx) + np.trace(k_yy)
    return float(((a_sum - a_diag) / (m - 1) - k_xy.sum() * 2 / m) / m)


def kid(
    features_a,
    features_b,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two feature sets: ``(mean, std)`` of the unbiased MMD^2 over random subsets.

    Each of ``num_subsets`` draws takes ``m = min(max_subset_size, len(a), len(b))`` rows of each
    set without replacement. ``std`` is the sample standard deviation over the draws (0.0 for a
    single draw). Same inputs and seed give the same numbers.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: features_a has {a.shape[1]}, features_b {b.shape[1]} "
            "(were they made by different feature extractors?)"
        )
    if int(num_subsets) < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if int(max_subset_size) < 2:
        raise ValueError(f"max_subset_size must be >= 2, got {max_subset_size}")
    d = a.shape[1]
    m = min(int(max_subset_size), a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)

    full = max(a.shape[0], b.shape[0]) <= _FULL_GRAM_MAX
    if full:
        k_bb = (b @ b.T / d + 1) ** 3
        k_aa = (a @ a.T / d + 1) ** 3
        k_ba = (b @ a.T / d + 1) ** 3

    values = np.empty(int(num_subsets))
    for i in range(int(num_subsets)):
        ix = rng.choice(b.shape[0], m, replace=False)  # clean-fid: x from feats2 first
        iy = rng.choice(a.shape[0], m, replace=False)  # then y from feats1
        if full:
            values[i] = _mmd2(k_bb[np.ix_(ix, ix)], k_aa[np.ix_(iy, iy)], k_ba[np.ix_(ix, iy)], m)
        else:
            x, y = b[ix], a[iy]
            values[i] = _mmd2(
                (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3, m
            )
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std
