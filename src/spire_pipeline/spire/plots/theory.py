"""Figures of the two-Gaussian theory check (claim 5; :mod:`spire_pipeline.spire.gmm`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire.plots.style import legend_outside, new_figure

#: error column of the results table -> its legend label
ERROR_LABELS = {
    "err_ddpm_true": "|π_DDPM − π|",
    "err_mle_true": "|π_MLE − π|",
    "err_label_true": "|label fraction − π|",
    "err_ddpm_mle": "|π_DDPM − π_MLE|",
}
_ERROR_COLOURS = {
    "err_ddpm_true": "#1f77b4",
    "err_mle_true": "#ff7f0e",
    "err_label_true": "#2ca02c",
    "err_ddpm_mle": "#9467bd",
}


def _cell_stats(results: pd.DataFrame, by: str, value: pd.Series) -> pd.DataFrame:
    grouped = value.groupby(results[by])
    return pd.DataFrame({"mean": grouped.mean(), "sem": grouped.sem()})


def error_vs_dimension(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Error against dimension per sample size (left) and pooled, sqrt(n)-scaled (right)."""
    fig = new_figure(12, 4.6)
    left, right = fig.subplots(1, 2)
    sizes = sorted(results["n"].unique())
    shades = dict(zip(sizes, np.linspace(0.35, 1.0, len(sizes))))
    for n, group in results.groupby("n"):
        for err, style in (("err_ddpm_true", "-o"), ("err_ddpm_mle", "--s")):
            stats = group.groupby("dim")[err].agg(["mean", "sem"])
            left.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["sem"],
                fmt=style,
                ms=3,
                capsize=2,
                color=_ERROR_COLOURS[err],
                alpha=float(shades[n]),
                label=f"{ERROR_LABELS[err]}, n = {n}",
            )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="dimension d (log scale)",
        ylabel="mean error of the mixing weight (± s.e.m.)",
        title="Error against dimension (expected flat)",
    )
    left.grid(alpha=0.3, which="both")
    legend_outside(left, fontsize=7)
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
            color=_ERROR_COLOURS[err],
            label=ERROR_LABELS[err] + " × √n",
        )
    dims = np.sort(results["dim"].unique()).astype(float)
    right.plot(
        dims,
        fit["intercept"] + fit["slope"] * np.log10(dims),
        "k:",
        label=f"fit: slope {fit['slope']:+.3f} per decade\n"
        f"[{fit['ci_low']:+.3f}, {fit['ci_high']:+.3f}] ({fit.get('confidence', 0.95):.0%} CI)",
    )
    right.set(
        xscale="log",
        xlabel="dimension d (log scale)",
        ylabel="√n × mean error of the mixing weight",
        title="All sample sizes pooled, scaled by √n",
    )
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    legend_outside(right, fontsize=7)
    fig.suptitle("Theory (claim 5): mixing weight recovered by gradient descent on the DDPM loss")
    return fig


def error_vs_sample_size(results: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """Mean error against n on log-log axes, with the fitted lines (expected slope -1/2)."""
    fig = new_figure(8.5, 4.6)
    ax = fig.add_subplot()
    fits = slopes.set_index(["axis", "error"])
    ns = np.sort(results["n"].unique()).astype(float)
    for err, marker in zip(ERROR_LABELS, "osd^"):
        stats = _cell_stats(results, "n", results[err])
        fit = fits.loc[("n", err)]
        colour = _ERROR_COLOURS[err]
        ax.errorbar(
            stats.index,
            stats["mean"],
            yerr=stats["sem"],
            fmt=marker,
            ms=4,
            capsize=2,
            color=colour,
            label=f"{ERROR_LABELS[err]}: slope {fit['slope']:+.2f}\n"
            f"  [{fit['ci_low']:+.2f}, {fit['ci_high']:+.2f}]",
        )
        ax.plot(ns, 10 ** (fit["intercept"] + fit["slope"] * np.log10(ns)), "-", color=colour, lw=1)
    ref = results.loc[results["n"] == ns[0], "err_ddpm_true"].mean() * np.sqrt(ns[0] / ns)
    ax.plot(ns, ref, "k:", lw=1, label="n^(−1/2) reference")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sample size n (log scale)",
        ylabel="mean error over dimensions and replicates",
        title="Theory: error against sample size (expected slope −1/2)",
    )
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax, fontsize=7, title="error: fitted slope [CI]")
    return fig


def b_convergence(trajectories: pd.DataFrame, results: pd.DataFrame) -> Figure:
    """Gradient descent on b: b over iterations (replicate 0, largest n, every dimension),
    and |b_t - b_final| for every run."""
    fig = new_figure(12, 4.6)
    left, right = fig.subplots(1, 2)
    n_max = results["n"].max()
    shown = trajectories[(trajectories["replicate"] == 0) & (trajectories["n"] == n_max)]
    for d, group in shown.groupby("dim"):
        (line,) = left.plot(group["iteration"], group["b"], lw=1.2, label=f"d = {d}")
        b_mle = results.loc[
            (results["dim"] == d) & (results["n"] == n_max) & (results["replicate"] == 0), "b_mle"
        ].iloc[0]
        left.plot(group["iteration"].max(), b_mle, "x", color=line.get_color(), ms=6)
    left.plot([], [], "kx", label="maximum likelihood")
    left.axhline(results["b_true"].iloc[0], color="k", ls=":", label="true b")
    left.set(
        xlabel="gradient-descent iteration",
        ylabel="b = ½ log(π / (1 − π))",
        title=f"b over iterations (n = {n_max}, replicate 0)",
    )
    left.grid(alpha=0.3)
    legend_outside(left, fontsize=7)
    b = trajectories.pivot(index="iteration", columns="run", values="b")
    right.plot(b.index, (b - b.iloc[-1]).abs().clip(lower=1e-17), color="C0", lw=0.4, alpha=0.4)
    right.set(
        yscale="log",
        xlabel="gradient-descent iteration",
        ylabel="|b_t − b_final| (log scale)",
        title=f"Convergence of every run ({b.shape[1]} runs)",
    )
    right.grid(alpha=0.3, which="both")
    fig.suptitle("Theory: gradient descent on the DDPM loss with respect to b")
    return fig
