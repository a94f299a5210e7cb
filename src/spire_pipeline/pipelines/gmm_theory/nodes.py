"""Nodes of ``gmm_theory``: thin wrappers over :mod:`spire_pipeline.spire.gmm` (tables and
MLflow metrics) and :mod:`spire_pipeline.spire.plots.theory` (figures)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire import gmm
from spire_pipeline.spire.plots import b_convergence, error_vs_dimension, error_vs_sample_size

log = logging.getLogger(__name__)


def run_gmm_sweep(params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every estimator per dimension x sample size x replicate, and the b trajectories."""
    cfg = gmm.load_config(params)
    result = gmm.run_sweep(cfg)
    results = pd.DataFrame(result.columns)
    results.insert(0, "run", np.arange(len(results)))
    iters, runs = result.trajectories.shape
    trajectories = pd.DataFrame(
        {
            "run": np.tile(np.arange(runs), iters),
            "iteration": np.repeat(np.arange(iters), runs),
            "b": result.trajectories.reshape(-1),
        }
    ).merge(results[["run", "dim", "n", "replicate"]], on="run")
    trajectories["pi"] = gmm.mixing_weight(trajectories["b"].to_numpy())
    worst = float(np.abs(results["ddpm_final_grad"]).max())
    if worst > 1e-8:
        log.warning(
            "gmm_theory: gradient descent on b has not converged (max |gradient| %.1e): "
            "lower ddpm.lr or raise ddpm.iterations",
            worst,
        )
    log.info(
        "gmm_theory: %d runs, timesteps %s, max |final gradient| %.2e",
        len(results),
        result.timesteps.tolist(),
        np.abs(results["ddpm_final_grad"]).max(),
    )
    return results, trajectories.sort_values(["run", "iteration"], ignore_index=True)


def summarise_errors(results: pd.DataFrame) -> pd.DataFrame:
    """Mean estimates and errors over replicates, per (dimension, sample size)."""
    cols = ["pi_true", "pi_label", "pi_mle", "pi_ddpm", *gmm.ERROR_KEYS]
    summary = results.groupby(["dim", "n"])[cols].mean()
    summary["err_ddpm_true_std"] = results.groupby(["dim", "n"])["err_ddpm_true"].std()
    summary["replicates"] = results.groupby(["dim", "n"])["replicate"].nunique()
    summary = summary.reset_index()
    log.info("gmm_theory mean errors:\n%s", summary[["dim", "n", *gmm.ERROR_KEYS]])
    return summary


def fit_error_slopes(
    results: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Fitted slopes with CIs (table), and the headline ones as MLflow metrics.

    ``dim`` slopes: sqrt(n)-scaled mean error against log10(dimension) (expected 0);
    ``n`` slopes: log10 mean error against log10(n) (expected -1/2).
    """
    cfg = gmm.load_config(params)
    columns = {c: results[c].to_numpy() for c in results.columns}
    fits = gmm.fit_slopes(columns, cfg.confidence)
    rows = []
    for key, fit in fits.items():
        axis, err = key.split(":")
        rows.append({"axis": axis, "error": err, "confidence": cfg.confidence, **vars(fit)})
    table = pd.DataFrame(rows)
    metrics = {}
    for key, fit in fits.items():
        axis, err = key.split(":")
        name = f"{axis}_slope_{err.removeprefix('err_')}"
        for suffix, value in (("", fit.slope), ("_ci_low", fit.ci_low), ("_ci_high", fit.ci_high)):
            if np.isfinite(value):
                metrics[name + suffix] = {"value": float(value), "step": 0}
    log.info("gmm_theory slopes:\n%s", table)
    return table, metrics


def plot_error_vs_dimension(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Error against dimension per sample size, and pooled, sqrt(n)-scaled, with the fit."""
    return error_vs_dimension(results, slopes)


def plot_error_vs_sample_size(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Mean error against n on log-log axes, with the fitted lines (expected slope -1/2)."""
    return error_vs_sample_size(results, slopes)


def plot_b_convergence(trajectories: pd.DataFrame, results: pd.DataFrame) -> Figure:
    """Gradient descent on b: b over iterations, and |b_t - b_final| for every run."""
    return b_convergence(trajectories, results)
