"""The sweep driver: every estimator for every dimension x sample size x replicate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from spire_pipeline.spire.config import GMMTheoryConfig
from spire_pipeline.spire.gmm.estimators import (
    ProjectedDDPMLoss,
    gradient_descent,
    mle_mixing_weight,
    spectral_mean,
)
from spire_pipeline.spire.gmm.mixture import (
    gauss_hermite,
    mixing_bias,
    mixing_weight,
    noise_levels,
    sample_mixture,
)
from spire_pipeline.spire.validation import validate_params

#: Rows of R^d drawn per chunk when sampling in full dimension (bounds memory at ~32 MB).
_CHUNK_ELEMENTS = 1 << 22


def load_config(params: dict[str, Any] | None) -> GMMTheoryConfig:
    """Validate the ``gmm_theory`` parameters; a bad value raises one message naming it."""
    return validate_params(GMMTheoryConfig, params, "gmm_theory")


@dataclass(frozen=True)
class SweepResult:
    """Per-run columns (one entry per dimension x sample size x replicate) and b trajectories."""

    columns: dict[str, np.ndarray]
    trajectories: np.ndarray  # (iterations + 1, runs)
    timesteps: np.ndarray


@dataclass(frozen=True)
class DataSet:
    """One data set seen through the mean direction: known (``p``) and estimated (``p_est``,
    ``r_est``: projections on, and length of, the spectral estimate of ``mu``)."""

    p: np.ndarray
    y: np.ndarray
    p_est: np.ndarray | None = None
    r_est: float = float("nan")
    cosine: float = float("nan")


def _data_set(cfg: GMMTheoryConfig, d: int, n: int, replicate: int) -> DataSet:
    """One data set from its own seeded generator (the means' estimate from another one)."""
    rng = np.random.default_rng([cfg.seed, replicate, d, n])
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    if not cfg.sample_in_full_dimension:
        y = np.where(rng.random(n) < cfg.pi, 1.0, -1.0)
        return DataSet(y * cfg.mu_norm + rng.standard_normal(n), y)
    mu = cfg.mu_norm * direction
    rows = max(1, _CHUNK_ELEMENTS // d)
    parts = [sample_mixture(min(rows, n - i), mu, cfg.pi, rng) for i in range(0, n, rows)]
    p = np.concatenate([x @ direction for x, _ in parts])
    y = np.concatenate([yy for _, yy in parts])
    if not cfg.estimated_means:
        return DataSet(p, y)
    x = np.concatenate([x.astype(np.float32) for x, _ in parts])
    est = spectral_mean(x, np.random.default_rng([cfg.seed, replicate, d, n, 1]))
    if est @ direction < 0:  # the sign is not identifiable (label switching): align it
        est = -est
    r_est = float(np.linalg.norm(est))
    unit = est / r_est if r_est > 0 else est
    return DataSet(
        p, y, (x @ unit.astype(np.float32)).astype(float), r_est, float(unit @ direction)
    )


def _estimated_means(
    cfg: GMMTheoryConfig,
    data: list[DataSet],
    a: np.ndarray,
    s: np.ndarray,
    g: np.ndarray,
    g_weight: np.ndarray,
) -> dict[str, np.ndarray]:
    """The DDPM and maximum-likelihood weights when ``mu`` is the samples' own estimate (the
    contrast to the theorem's setting, where the backbone knows ``mu``)."""
    pi_ddpm, pi_mle = np.empty(len(data)), np.empty(len(data))
    for k, ds in enumerate(data):
        counts = np.array([len(ds.p_est)])
        pi_mle[k] = mle_mixing_weight(ds.p_est, counts, ds.r_est, cfg.mle.max_iterations)[0]
        loss = ProjectedDDPMLoss.build(ds.p_est, counts, ds.r_est, a, s, g=g, g_weight=g_weight)
        b, _, _ = gradient_descent(loss, cfg.ddpm.b_init, cfg.ddpm.lr, cfg.ddpm.iterations)
        pi_ddpm[k] = mixing_weight(b[0])
    return {
        "mean_cosine": np.array([ds.cosine for ds in data]),
        "mean_norm_est": np.array([ds.r_est for ds in data]),
        "pi_ddpm_est": pi_ddpm,
        "pi_mle_est": pi_mle,
        "err_ddpm_est_true": np.abs(pi_ddpm - cfg.pi),
        "err_mle_est_true": np.abs(pi_mle - cfg.pi),
    }


def run_sweep(cfg: GMMTheoryConfig, progress: bool = True) -> SweepResult:
    """All estimators for every dimension x sample size x replicate (vectorised per dimension).

    BLAS runs on one thread: its operations here are matrix-vector products, which a pool of
    threads slows down (150x on a loaded 2-core machine, measured).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _run_sweep(cfg, progress)


def _run_sweep(cfg: GMMTheoryConfig, progress: bool) -> SweepResult:
    steps, a, s = noise_levels(cfg.ddpm, cfg.seed)
    g, g_weight = gauss_hermite(cfg.ddpm.hermite_nodes)
    cols: dict[str, list[np.ndarray]] = {}
    trajectories = []
    for d in tqdm(cfg.dims, desc="gmm_theory sweep (dimensions)", disable=not progress):
        keys = [(rep, n) for rep in range(cfg.replicates) for n in cfg.sample_sizes]
        data = [_data_set(cfg, d, n, rep) for rep, n in keys]
        p = np.concatenate([ds.p for ds in data])
        counts = np.array([n for _, n in keys])
        label = np.array([np.mean(ds.y > 0) for ds in data])
        pi_mle = mle_mixing_weight(p, counts, cfg.mu_norm, cfg.mle.max_iterations, cfg.mle.tol)
        loss = ProjectedDDPMLoss.build(p, counts, cfg.mu_norm, a, s, g=g, g_weight=g_weight)
        b_ddpm, traj, grad = gradient_descent(
            loss, cfg.ddpm.b_init, cfg.ddpm.lr, cfg.ddpm.iterations
        )
        trajectories.append(traj)
        pi_ddpm = mixing_weight(b_ddpm)
        block = {
            "dim": np.full(len(keys), d),
            "n": counts,
            "replicate": np.array([rep for rep, _ in keys]),
            "pi_true": np.full(len(keys), cfg.pi),
            "pi_label": label,
            "pi_mle": pi_mle,
            "pi_ddpm": pi_ddpm,
            "b_true": np.full(len(keys), float(mixing_bias(cfg.pi))),
            "b_mle": mixing_bias(np.clip(pi_mle, 1e-300, 1 - 1e-16)),
            "b_ddpm": b_ddpm,
            "ddpm_final_grad": grad,
            "err_ddpm_mle": np.abs(pi_ddpm - pi_mle),
            "err_ddpm_true": np.abs(pi_ddpm - cfg.pi),
            "err_mle_true": np.abs(pi_mle - cfg.pi),
            "err_label_true": np.abs(label - cfg.pi),
        }
        if cfg.estimated_means and cfg.sample_in_full_dimension:
            block |= _estimated_means(cfg, data, a, s, g, g_weight)
        for key, value in block.items():
            cols.setdefault(key, []).append(value)
    return SweepResult(
        {k: np.concatenate(v) for k, v in cols.items()}, np.concatenate(trajectories, axis=1), steps
    )
