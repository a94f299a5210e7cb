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

from spire_pipeline.spire.gmm.estimators import (
    ProjectedDDPMLoss,
    gradient_descent,
    mle_mixing_weight,
)
from spire_pipeline.spire.gmm.mixture import (
    alpha_bar_schedule,
    ddpm_loss_dense,
    gauss_hermite,
    mixing_bias,
    mixing_weight,
    mixture_score,
    noise_levels,
    sample_mixture,
)
from spire_pipeline.spire.gmm.statistics import (
    ERROR_KEYS,
    LineFit,
    cell_means,
    dimension_slope,
    fit_line,
    fit_slopes,
    sample_size_slope,
)
from spire_pipeline.spire.gmm.sweep import SweepResult, load_config, run_sweep

__all__ = [
    "ERROR_KEYS",
    "LineFit",
    "ProjectedDDPMLoss",
    "SweepResult",
    "alpha_bar_schedule",
    "cell_means",
    "ddpm_loss_dense",
    "dimension_slope",
    "fit_line",
    "fit_slopes",
    "gauss_hermite",
    "gradient_descent",
    "load_config",
    "mixing_bias",
    "mixing_weight",
    "mixture_score",
    "mle_mixing_weight",
    "noise_levels",
    "run_sweep",
    "sample_mixture",
    "sample_size_slope",
]
