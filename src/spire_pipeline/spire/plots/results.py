"""The figures of the SPIRE experiments: partition, pretraining, KID, adaptation, sweep.

Every figure colours a method the same way (:func:`~.style.method_colour`), labels its axes in
words with units and direction, and names classes when the dataset's class names are known.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spire_pipeline.spire.plots.basic import heatmap, image_grid
from spire_pipeline.spire.plots.style import (
    PHASE_TITLES,
    REAL_COLOUR,
    class_label,
    class_list,
    extractor_words,
    kid_label,
    legend_outside,
    method_colour,
    method_order,
    new_figure,
)

#: phase -> how a sample-grid row names it
_SHORT_PHASES = {"pretrained": "pretrained", "adapted": "adapted", "sweep": "sweep cell"}
#: label of the real-against-real reference line
REFERENCE_LABEL = "real vs real\n(two halves of a client's\ntest split; median)"


def reference_level(reference: pd.DataFrame | None) -> float | None:
    """Median real-against-real KID over clients, or ``None`` without a reference table."""
    if reference is None or reference.empty or "kid_mean" not in reference:
        return None
    value = float(np.nanmedian(reference["kid_mean"].to_numpy(float)))
    return value if np.isfinite(value) else None


def partition_heatmap(table: pd.DataFrame, class_names: Sequence[str] = ()) -> Figure:
    """Images per client and class (columns ``class_<k>``), classes by name when known."""
    classes = [c for c in table.columns if c.startswith("class_")]
    labels = [f"{c} ({r})" for c, r in zip(table["client"], table["role"])]
    return heatmap(
        table[classes].to_numpy(),
        row_labels=labels,
        col_labels=[class_label(int(c.removeprefix("class_")), class_names) for c in classes],
        title="Images per client and class",
        xlabel="class",
        ylabel="client (role)",
        cbar_label="images",
        rotate_columns=bool(class_names),
    )


def loss_curves(history: pd.DataFrame, window: int | None = None) -> Figure:
    """Mean local DDPM loss per round, one colour per method: each round thin, a moving
    average over ``window`` rounds (default: 1/25 of the rounds) bold, on a log axis."""
    per_round = history.groupby(["method", "round"], sort=True)["loss_mean"].first().reset_index()
    rounds = int(per_round["round"].nunique()) if len(per_round) else 0
    window = window or max(1, rounds // 25)
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for method in method_order(per_round["method"]):
        g = per_round[per_round["method"] == method]
        x, y = g["round"].to_numpy() + 1, g["loss_mean"].to_numpy(float)
        colour = method_colour(method)
        if window > 1:
            ax.plot(x, y, color=colour, lw=0.5, alpha=0.3)
            y = pd.Series(y).rolling(window, center=True, min_periods=1).mean().to_numpy()
        ax.plot(x, y, color=colour, lw=1.8, label=method, marker="o" if rounds <= 30 else None)
    smoothed = (
        f" (thin: each round; bold: centred moving average over {window} rounds)"
        if window > 1
        else ""
    )
    ax.set(
        title="Federated pretraining: mean local loss per round",
        xlabel=f"round{smoothed}",
        ylabel="mean local DDPM loss (ε-prediction MSE, log scale)",
        yscale="log",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax, title="method")
    return fig


def kid_bars(table: pd.DataFrame, reference: pd.DataFrame | None = None) -> Figure:
    """KID per client, one bar per method (error bars: std over KID subsets), one panel per
    phase, with the real-against-real reference as a dashed line."""
    extractor = str(table["extractor"].iloc[0]) if len(table) else ""
    table = (
        table.groupby(["phase", "client", "method"], sort=False)[["kid_mean", "kid_std"]]
        .mean()
        .reset_index()
    )
    phases = [p for p in PHASE_TITLES if p in set(table["phase"])]
    phases += [p for p in dict.fromkeys(table["phase"]) if p not in phases]
    ref = reference_level(reference)
    n_clients = table["client"].nunique()
    fig = new_figure(max(7.5, 0.55 * n_clients + 4.0), 0.6 + 3.0 * len(phases))
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    for ax, phase in zip(axes, phases):
        sub = table[table["phase"] == phase]
        clients = sorted(sub["client"].unique())
        methods = method_order(sub["method"])
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            rows = sub[sub["method"] == m].set_index("client").reindex(clients)
            x = np.arange(len(clients)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(
                x,
                rows["kid_mean"],
                width,
                yerr=rows["kid_std"],
                label=m,
                capsize=2,
                color=method_colour(m),
                error_kw={"lw": 0.8},
            )
        if ref is not None:
            ax.axhline(ref, color=REAL_COLOUR, ls="--", lw=1, label=REFERENCE_LABEL)
        ax.set_xticks(range(len(clients)), labels=clients, rotation=45, ha="right", fontsize=8)
        ax.set(title=PHASE_TITLES.get(phase, phase), xlabel="client", ylabel="KID, lower is better")
        ax.grid(axis="y", alpha=0.3)
        legend_outside(ax, title="method")
    fig.suptitle(
        f"Per-client KID of generated vs held-out real images ({extractor_words(extractor)})\n"
        "bars: mean ± std over KID subsets",
        fontsize=10,
    )
    return fig


def efficiency(unseen_client_table: pd.DataFrame, reference: pd.DataFrame | None = None) -> Figure:
    """Median unseen-client KID against the parameters each method trains (log x)."""
    table = unseen_client_table
    extractor = str(table["extractor"].iloc[0]) if len(table) else ""
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    for method in method_order(table["method"]):
        r = table[table["method"] == method].iloc[0]
        ax.scatter(r["trained_params"], r["kid_median"], s=50, color=method_colour(method))
        ax.annotate(
            method,
            (r["trained_params"], r["kid_median"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
            color=method_colour(method),
        )
    ref = reference_level(reference)
    if ref is not None:
        ax.axhline(ref, color=REAL_COLOUR, ls="--", lw=1, label=REFERENCE_LABEL)
        legend_outside(ax)
    ax.set_xscale("log")
    if len(table):
        lo, hi = float(table["trained_params"].min()), float(table["trained_params"].max())
        ax.set_xlim(lo / 2, hi * 8)  # room for the names of the rightmost points
    ax.set(
        xlabel="parameters trained per unseen client (log scale)",
        ylabel=kid_label(extractor, "median unseen-client KID").replace(" (", "\n("),
        title="Adaptation: quality against parameters trained",
    )
    ax.grid(alpha=0.3)
    ymin = float(np.nanmin(table["kid_median"])) if len(table) else 0.0
    low, top = min(0.0, ymin, ref if ref is not None else 0.0), ax.get_ylim()[1]
    ax.set_ylim(low - 0.03 * (top - low), top)
    return fig


def sweep_heatmaps(table: pd.DataFrame) -> dict[str, Figure]:
    """One heat map per method: median KID over clients for each (learning rate, epochs) cell.

    All methods share one colour scale, so that their maps can be compared side by side. A cell
    in which any client diverged is blank and says how many did ("1/2 diverged").
    """
    from spire_pipeline.spire.sweep import cell_table  # imports torch: only when drawn

    cells = cell_table(table)
    grids, status = {}, {}
    for method in method_order(cells["method"]):
        sub = cells[cells["method"] == method]
        grids[method] = sub.pivot(index="lr", columns="epochs", values="kid_mean")
        status[method] = sub.pivot(index="lr", columns="epochs", values="status")
    finite = np.concatenate([g.to_numpy().ravel() for g in grids.values()] or [np.empty(0)])
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (None, None)
    extractor = str(table["extractor"].iloc[0]) if len(table) else ""
    return {
        method: heatmap(
            grid.to_numpy(),
            row_labels=[f"{v:g}" for v in grid.index],
            col_labels=[str(c) for c in grid.columns],
            fmt="{:.2f}",
            cmap="magma_r",
            title=f"{method}: median KID over clients\n{extractor_words(extractor)}",
            xlabel="epochs of adaptation",
            ylabel="learning rate",
            cbar_label="median KID, lower is better",
            nan_labels=status[method].to_numpy(),
            vmin=vmin,
            vmax=vmax,
        )
        for method, grid in grids.items()
    }


def kid_sample_grid(
    client: str,
    real: np.ndarray,
    rows: Sequence[tuple[str, str, np.ndarray]],
    classes: Sequence[int] = (),
    class_names: Sequence[str] = (),
) -> Figure:
    """A client's real test images, then one row of samples per (method, phase)."""
    order = {m: i for i, m in enumerate(method_order(m for m, _, _ in rows))}
    phases = {p: i for i, p in enumerate(PHASE_TITLES)}
    rows = sorted(rows, key=lambda r: (order[r[0]], phases.get(r[1], len(phases)), r[1]))
    labels = ["real (test split)"] + [f"{m}, {_SHORT_PHASES.get(p, p)}" for m, p, _ in rows]
    what = f" ({class_list(classes, class_names)})" if len(classes) else ""
    return image_grid(
        [real] + [imgs for _, _, imgs in rows],
        labels,
        title=f"{client}{what}: real test images, then samples per method",
        label_colours=[None] + [method_colour(m) for m, _, _ in rows],
    )


def pretraining_sample_grid(
    method: str,
    rows: Sequence[tuple[str, Sequence[int], np.ndarray]],
    n_real: int,
    class_names: Sequence[str] = (),
) -> Figure:
    """Per seen client (its name and classes): ``n_real`` real images, then samples."""
    n_fake = max((len(imgs) - n_real for _, _, imgs in rows), default=0)
    return image_grid(
        [imgs for _, _, imgs in rows],
        [f"{client}: {class_list(classes, class_names)}" for client, classes, _ in rows],
        title=f"{method} after pretraining: {n_real} real | {n_fake} generated per seen client",
        split_after=n_real,
    )
