"""The two-component Gaussian mixture, its VP noising and exact score, and the DDPM schedule."""

from __future__ import annotations

import math

import numpy as np

from spire_pipeline.spire.config import DDPMConfig


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
