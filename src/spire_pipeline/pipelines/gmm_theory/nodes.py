"""Nodes of ``gmm_theory``: thin wrappers over :mod:`spire_pipeline.spire.gmm` that turn its
arrays into tables, MLflow metrics and figures."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire import gmm

log = logging.getLogger(__name__)

#: error column -> legend label
ERROR_LABELS = {
    "err_ddpm_true": "|pi_ddpm - pi|",
    "err_mle_true": "|pi_mle - pi|",
    "err_label_true": "|label fraction - pi|",
    "err_ddpm_mle": "|pi_ddpm - pi_mle|",
}


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
    cols = ["pi_true", "pi_label", "pi_mle", "pi_ddpm", *ERROR_LABELS]
    summary = results.groupby(["dim", "n"])[cols].mean()
    summary["err_ddpm_true_std"] = results.groupby(["dim", "n"])["err_ddpm_true"].std()
    summary["replicates"] = results.groupby(["dim", "n"])["replicate"].nunique()
    summary = summary.reset_index()
    log.info("gmm_theory mean errors:\n%s", summary[["dim", "n", *ERROR_LABELS]])
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


def _cell_stats(results: pd.DataFrame, by: str, value: pd.Series) -> pd.DataFrame:
    grouped = value.groupby(results[by])
    return pd.DataFrame({"mean": grouped.mean(), "sem": grouped.sem()})


def plot_error_vs_dimension(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Error against dimension per sample size (left) and pooled, sqrt(n)-scaled (right)."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    for n, group in results.groupby("n"):
        for err, style in (("err_ddpm_true", "-o"), ("err_ddpm_mle", "--s")):
            stats = group.groupby("dim")[err].agg(["mean", "sem"])
            line = left.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["sem"],
                fmt=style,
                ms=3,
                capsize=2,
                label=f"{ERROR_LABELS[err]}, n={n}",
            )
            if err == "err_ddpm_true":
                color = line[0].get_color()
            else:
                for artist in (line[0], *line[2]):
                    artist.set_color(color)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="dimension d",
        ylabel="mean error (± s.e.m.)",
        title="Error vs dimension (expected flat)",
    )
    left.legend(fontsize=6, ncol=2)
    fit = slopes.set_index(["axis", "error"]).loc[("dim", "err_ddpm_true")]
    for err in ("err_ddpm_true", "err_mle_true", "err_label_true"):
        stats = _cell_stats(results, "dim", results[err] * np.sqrt(results["n"]))
        right.errorbar(
            stats.index,
            stats["mean"],
            yerr=stats["sem"],
            fmt="-o",
            ms=3,
            capsize=2,
            label=ERROR_LABELS[err] + " x sqrt(n)",
        )
    dims = np.sort(results["dim"].unique()).astype(float)
    right.plot(
        dims,
        fit["intercept"] + fit["slope"] * np.log10(dims),
        "k:",
        label=f"fit: slope {fit['slope']:+.3f} per decade "
        f"[{fit['ci_low']:+.3f}, {fit['ci_high']:+.3f}]",
    )
    right.set(
        xscale="log",
        xlabel="dimension d",
        ylabel="sqrt(n) x mean error",
        title="All n pooled, scaled by sqrt(n)",
    )
    right.set_ylim(bottom=0)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_error_vs_sample_size(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Mean error against n on log-log axes, with the fitted line (expected slope -1/2)."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    fits = slopes.set_index(["axis", "error"])
    ns = np.sort(results["n"].unique()).astype(float)
    for err, marker in zip(ERROR_LABELS, "osd^"):
        stats = _cell_stats(results, "n", results[err])
        fit = fits.loc[("n", err)]
        line = ax.errorbar(
            stats.index,
            stats["mean"],
            yerr=stats["sem"],
            fmt=marker,
            ms=4,
            capsize=2,
            label=f"{ERROR_LABELS[err]}: slope {fit['slope']:+.2f} "
            f"[{fit['ci_low']:+.2f}, {fit['ci_high']:+.2f}]",
        )
        ax.plot(
            ns,
            10 ** (fit["intercept"] + fit["slope"] * np.log10(ns)),
            "-",
            color=line[0].get_color(),
            lw=1,
        )
    ref = results.loc[results["n"] == ns[0], "err_ddpm_true"].mean() * np.sqrt(ns[0] / ns)
    ax.plot(ns, ref, "k:", lw=1, label="n^(-1/2) reference")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sample size n",
        ylabel="mean error over dims and replicates",
        title="Error vs sample size (expected slope -1/2)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_b_convergence(trajectories: pd.DataFrame, results: pd.DataFrame) -> Figure:
    """Gradient descent on b: b over iterations (replicate 0, largest n, every dimension),
    and |b_t - b_final| for every run."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    n_max = results["n"].max()
    shown = trajectories[(trajectories["replicate"] == 0) & (trajectories["n"] == n_max)]
    for d, group in shown.groupby("dim"):
        left.plot(group["iteration"], group["b"], lw=1, label=f"d={d}")
        b_mle = results.loc[
            (results["dim"] == d) & (results["n"] == n_max) & (results["replicate"] == 0), "b_mle"
        ].iloc[0]
        left.plot(group["iteration"].max(), b_mle, "kx", ms=5)
    left.axhline(results["b_true"].iloc[0], color="k", ls=":", label="true b")
    left.set(xlabel="iteration", ylabel="b", title=f"b over iterations (n={n_max}; x = MLE)")
    left.legend(fontsize=7)
    b = trajectories.pivot(index="iteration", columns="run", values="b")
    right.plot(b.index, (b - b.iloc[-1]).abs().clip(lower=1e-17), color="C0", lw=0.4, alpha=0.4)
    right.set(
        yscale="log", xlabel="iteration", ylabel="|b_t - b_final|", title="Convergence of every run"
    )
    fig.tight_layout()
    return fig
