"""Theory check (DESIGN claim 5): the mixing weight of a two-component Gaussian mixture,
recovered by gradient descent on the DDPM loss, matches the maximum-likelihood weight with
an error that does not grow with the dimension.

Data: ``x0 ~ pi N(mu, I_d) + (1 - pi) N(-mu, I_d)``. Variance-preserving noising
``x_t = a_t x0 + s_t z`` with ``a_t^2 + s_t^2 = 1`` keeps the covariance at ``I_d``, so
``x_t ~ pi N(a_t mu, I) + (1 - pi) N(-a_t mu, I)`` and its exact score is

    score(x_t) = -x_t + a_t mu tanh(a_t mu.x_t + b),   b = 0.5 log(pi / (1 - pi)).

The model family is that score with ``mu`` shared and known (the trained backbone) and the
bias ``b`` free (the client embedding). The DDPM loss is the epsilon-prediction loss
``E ||eps_hat(x_t) - z||^2`` with ``eps_hat = -s_t score(x_t)``, averaged over a grid (or a
seeded sample) of DDPM timesteps, its expectation over ``z`` taken by Gauss-Hermite quadrature
(what training with fresh noise converges to). Writing ``e = mu/|mu|``, ``r = |mu|``,
``p = e.x0`` and ``g = e.z``, the loss is ``a_t^2 (a_t g - s_t p + s_t r tanh(a_t r (a_t p +
s_t g) + b))^2`` plus a ``b``-free term from the directions orthogonal to ``mu``: both the
DDPM loss and the likelihood see the data only through ``p``. The data are still drawn in
``R^d`` and projected (``sample_in_full_dimension``); :func:`ddpm_loss_dense` is the loss in
``R^d`` that the tests check the reduction against.

Estimators, per (dimension, sample size, replicate): the true ``pi``, the empirical label
fraction, the maximum-likelihood ``pi`` given ``mu`` (safeguarded Newton on the exact,
concave log-likelihood) and the DDPM ``pi`` (plain gradient descent on ``b``, trajectory
kept). Every random draw comes from ``np.random.default_rng`` keyed by the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from spire_pipeline.spire.config import DDPMConfig, GMMTheoryConfig
from spire_pipeline.spire.validation import validate_params

#: Rows of R^d drawn per chunk when sampling in full dimension (bounds memory at ~32 MB).
_CHUNK_ELEMENTS = 1 << 22


def load_config(params: dict[str, Any] | None) -> GMMTheoryConfig:
    """Validate the ``gmm_theory`` parameters; a bad value raises one message naming it."""
    return validate_params(GMMTheoryConfig, params, "gmm_theory")


# --------------------------------------------------------------------------- model pieces


def mixing_bias(pi: float | np.ndarray) -> float | np.ndarray:
    """The score's bias ``b = 0.5 log(pi / (1 - pi))``."""
    return 0.5 * np.log(np.asarray(pi) / (1.0 - np.asarray(pi)))


def mixing_weight(b: float | np.ndarray) -> float | np.ndarray:
    """Inverse of :func:`mixing_bias`: ``pi = (1 + tanh b) / 2``."""
    return 0.5 * (1.0 + np.tanh(b))


def alpha_bar_schedule(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """DDPM linear-beta schedule: ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``."""
    betas = np.linspace(beta_start, beta_end, num_train_timesteps)
    return np.cumprod(1.0 - betas)


def noise_levels(cfg: DDPMConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timesteps and their ``(a_t, s_t)``: a centred grid, or a seeded uniform sample."""
    alpha_bar = alpha_bar_schedule(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    if cfg.noise_level_sampling == "grid":
        steps = (np.arange(cfg.noise_levels) + 0.5) * cfg.num_train_timesteps / cfg.noise_levels
        steps = steps.astype(np.int64)
    else:
        rng = np.random.default_rng([seed, cfg.num_train_timesteps])
        steps = np.sort(rng.choice(cfg.num_train_timesteps, cfg.noise_levels, replace=False))
    return steps, np.sqrt(alpha_bar[steps]), np.sqrt(1.0 - alpha_bar[steps])


def sample_mixture(
    n: int, mu: np.ndarray, pi: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of ``pi N(mu, I) + (1 - pi) N(-mu, I)``: points ``(n, d)`` and signs ``+-1``."""
    y = np.where(rng.random(n) < pi, 1.0, -1.0)
    return y[:, None] * mu[None, :] + rng.standard_normal((n, mu.shape[0])), y


def mixture_score(
    x: np.ndarray, mu: np.ndarray, a: float | np.ndarray, b: float | np.ndarray
) -> np.ndarray:
    """Exact score of ``pi N(a mu, I) + (1 - pi) N(-a mu, I)``: ``-x + a mu tanh(a mu.x + b)``.

    ``x`` is ``(..., d)``; ``a`` and ``b`` broadcast against ``x.shape[:-1]``.
    """
    a = np.asarray(a, dtype=float)
    return -x + (a[..., None] * mu) * np.tanh(a * (x @ mu) + b)[..., None]


def ddpm_loss_dense(
    b: float, x0: np.ndarray, mu: np.ndarray, a: np.ndarray, s: np.ndarray, *, z: np.ndarray
) -> float:
    """Epsilon-prediction loss in ``R^d`` for given noise: ``mean_{i,k} ||eps_hat - z_ik||^2``.

    ``x0`` is ``(n, d)``, ``a``/``s`` are ``(K,)`` and ``z`` is ``(n, K, d)``;
    ``eps_hat(x_t) = -s_t score(x_t)``. Reference for the projected loss (tests).
    """
    a3, s3 = a[None, :, None], s[None, :, None]
    xt = a3 * x0[:, None, :] + s3 * z
    eps_hat = -s3 * mixture_score(xt, mu, a[None, :], b)
    return float(np.mean(np.sum((eps_hat - z) ** 2, axis=-1)))


def gauss_hermite(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E f(g)``, ``g ~ N(0, 1)`` (probabilists' Hermite)."""
    g, w = np.polynomial.hermite_e.hermegauss(nodes)
    return g, w / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ProjectedDDPMLoss:
    """The ``b``-dependent part of the DDPM loss for many data sets at once.

    Data set ``c`` owns the contiguous rows ``starts[c] : starts[c] + counts[c]`` of the
    projections ``p``. Columns are noise nodes ``m`` = (timestep, value of ``g``) with ``a``,
    ``s``, ``weight`` of shape ``(M,)``; ``g`` is ``(1, M)`` (quadrature nodes shared by all
    rows) or ``(F, M)`` (one draw per row). Per row and node the loss is
    ``weight (a g - s p + s r tanh(a r (a p + s g) + b))^2`` with ``weight`` = node weight
    x ``a^2 / K``. Evaluated in row chunks, so memory stays ``O(F)``.
    """

    p: np.ndarray
    r: float
    a: np.ndarray
    s: np.ndarray
    g: np.ndarray
    weight: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    chunk_rows: int = 2048

    @classmethod
    def build(
        cls,
        p: np.ndarray,
        counts: np.ndarray,
        r: float,
        a: np.ndarray,
        s: np.ndarray,
        *,
        g: np.ndarray,
        g_weight: np.ndarray,
    ) -> ProjectedDDPMLoss:
        """From projections ``p`` (F,), noise levels ``a, s`` (K,) and values of ``g = e.z``.

        ``g`` is ``(Q,)`` quadrature nodes with weights ``g_weight`` (Q,), or ``(F, K)`` draws
        (one per row and timestep; pass ``g_weight=[1.0]``). Timesteps weigh equally.
        """
        counts = np.asarray(counts, dtype=np.int64)
        k = len(a)
        if g.ndim == 1:  # quadrature: nodes (timestep, g_q), row-independent
            q = len(g)
            g_nodes = np.tile(g, k)[None, :]
            node_w = np.tile(np.asarray(g_weight, dtype=float), k)
        else:  # draws: one g per row and timestep
            q = 1
            g_nodes = np.asarray(g, dtype=float).reshape(len(p), k)
            node_w = np.ones(k)
        a_m, s_m = np.repeat(a, q), np.repeat(s, q)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(
            np.asarray(p, dtype=float),
            float(r),
            a_m,
            s_m,
            g_nodes,
            node_w * a_m**2 / k,
            starts,
            counts,
        )

    def per_row(self, b: np.ndarray, derivative: bool = False) -> np.ndarray:
        """Per-row loss (or its derivative in ``b``), summed over noise nodes (F,)."""
        b_row = np.repeat(np.asarray(b, dtype=float), self.counts)
        sr = self.s * self.r
        coef = (2.0 * sr * self.weight) if derivative else self.weight
        out = np.empty(len(self.p))
        for i in range(0, len(self.p), self.chunk_rows):
            rows = slice(i, i + self.chunk_rows)
            p = self.p[rows, None]
            g = self.g[rows] if self.g.shape[0] > 1 else self.g
            t = self.a * self.r * (self.a * p + self.s * g)
            t += b_row[rows, None]
            np.tanh(t, out=t)
            u = self.a * g - self.s * p
            u += sr * t
            if derivative:
                np.multiply(t, t, out=t)
                np.subtract(1.0, t, out=t)
                u *= t
            else:
                u *= u
            out[rows] = u @ coef
        return out

    def loss(self, b: np.ndarray) -> np.ndarray:
        """Loss of each data set at its own bias ``b`` (C,)."""
        return np.add.reduceat(self.per_row(b, derivative=False), self.starts) / self.counts

    def grad(self, b: np.ndarray) -> np.ndarray:
        """Derivative of :meth:`loss` with respect to each data set's ``b`` (C,)."""
        return np.add.reduceat(self.per_row(b, derivative=True), self.starts) / self.counts


def gradient_descent(
    loss: ProjectedDDPMLoss, b_init: float, lr: float, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain gradient descent on every data set's ``b`` at once.

    Returns the final ``b`` (C,), the trajectory ``(iterations + 1, C)`` and the final gradient.
    """
    b = np.full(len(loss.counts), float(b_init))
    trajectory = np.empty((iterations + 1, len(b)))
    trajectory[0] = b
    for it in range(iterations):
        b = b - lr * loss.grad(b)
        trajectory[it + 1] = b
    return b, trajectory, loss.grad(b)


def mle_mixing_weight(
    p: np.ndarray, counts: np.ndarray, r: float, max_iterations: int = 100, tol: float = 1e-12
) -> np.ndarray:
    """Maximum-likelihood ``pi`` given ``mu`` for each data set (rows of ``p`` by ``counts``).

    With ``t_i = tanh(r p_i)`` and ``c = 2 pi - 1`` the log-likelihood is
    ``sum_i log(1 + c t_i)`` + const, concave in ``c``; its root ``sum t/(1 + c t) = 0`` is found
    by Newton's method kept inside a shrinking bracket (bisection when a step leaves it).
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    t = np.tanh(r * p)
    c = np.zeros(len(counts))
    lo, hi = -np.ones(len(counts)), np.ones(len(counts))
    for _ in range(max_iterations):
        denom = 1.0 + np.repeat(c, counts) * t
        score = np.add.reduceat(t / denom, starts)
        curv = -np.add.reduceat((t / denom) ** 2, starts)
        lo = np.where(score > 0, c, lo)
        hi = np.where(score < 0, c, hi)
        step = np.where(curv < 0, -score / np.minimum(curv, -1e-300), 0.0)
        new = c + step
        outside = (new <= lo) | (new >= hi)
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = np.abs(new - c) < tol
        c = new
        if done.all():
            break
    return 0.5 * (1.0 + c)


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepResult:
    """Per-run columns (one entry per dimension x sample size x replicate) and b trajectories."""

    columns: dict[str, np.ndarray]
    trajectories: np.ndarray  # (iterations + 1, runs)
    timesteps: np.ndarray


def _projections(
    cfg: GMMTheoryConfig, d: int, n: int, replicate: int
) -> tuple[np.ndarray, np.ndarray]:
    """Projections ``e.x0`` and labels of one data set, from its own seeded generator."""
    rng = np.random.default_rng([cfg.seed, replicate, d, n])
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    if not cfg.sample_in_full_dimension:
        y = np.where(rng.random(n) < cfg.pi, 1.0, -1.0)
        return y * cfg.mu_norm + rng.standard_normal(n), y
    mu = cfg.mu_norm * direction
    rows = max(1, _CHUNK_ELEMENTS // d)
    parts = [sample_mixture(min(rows, n - i), mu, cfg.pi, rng) for i in range(0, n, rows)]
    x_proj = np.concatenate([x @ direction for x, _ in parts])
    return x_proj, np.concatenate([y for _, y in parts])


def run_sweep(cfg: GMMTheoryConfig, progress: bool = True) -> SweepResult:
    """All estimators for every dimension x sample size x replicate (vectorised per dimension)."""
    steps, a, s = noise_levels(cfg.ddpm, cfg.seed)
    g, g_weight = gauss_hermite(cfg.ddpm.hermite_nodes)
    cols: dict[str, list[np.ndarray]] = {}
    trajectories = []
    for d in tqdm(cfg.dims, desc="gmm_theory sweep (dimensions)", disable=not progress):
        keys = [(rep, n) for rep in range(cfg.replicates) for n in cfg.sample_sizes]
        data = [_projections(cfg, d, n, rep) for rep, n in keys]
        p = np.concatenate([x for x, _ in data])
        counts = np.array([n for _, n in keys])
        label = np.array([np.mean(y > 0) for _, y in data])
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
        for key, value in block.items():
            cols.setdefault(key, []).append(value)
    return SweepResult(
        {k: np.concatenate(v) for k, v in cols.items()}, np.concatenate(trajectories, axis=1), steps
    )


# --------------------------------------------------------------------------- slopes


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


ERROR_KEYS = ("err_ddpm_true", "err_ddpm_mle", "err_mle_true", "err_label_true")


def fit_slopes(columns: dict[str, np.ndarray], confidence: float = 0.95) -> dict[str, LineFit]:
    """Dimension and sample-size slopes for every error column: ``{"dim:err_..": fit, ...}``."""
    fits = {}
    for key in ERROR_KEYS:
        fits[f"dim:{key}"] = dimension_slope(columns, key, confidence)
        fits[f"n:{key}"] = sample_size_slope(columns, key, confidence)
    return fits
