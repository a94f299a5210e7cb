"""Matplotlib figures shared by the pipelines (no pyplot state: figures are returned)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    cbar_label: str = "",
    fmt: str = "{:.0f}",
    cmap: str = "viridis",
    nan_text: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    nan_labels: np.ndarray | None = None,
) -> Figure:
    """An annotated heat map (rows x columns); NaN cells are blank, labelled ``nan_text`` (or
    by ``nan_labels[i, j]`` when given)."""
    values = np.asarray(values, dtype=float)
    width = max(4.8, 2.5 + 0.55 * len(col_labels))
    fig = Figure(figsize=(width, 1.4 + 0.32 * len(row_labels)))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if values.size <= 400:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if not np.isfinite(values[i, j]):
                    text = nan_text if nan_labels is None else str(nan_labels[i, j])
                    if text:
                        ax.text(j, i, text, ha="center", va="center", fontsize=6)
                else:
                    ax.text(
                        j,
                        i,
                        fmt.format(values[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=_text_colour(im.cmap(im.norm(values[i, j]))),
                    )
    fig.colorbar(im, ax=ax, label=cbar_label)
    fig.tight_layout()
    return fig


def _text_colour(rgba: Sequence[float]) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luma)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def image_grid(
    rows: Sequence[np.ndarray], row_labels: Sequence[str], title: str = "", scale: float = 0.6
) -> Figure:
    """A grid of uint8 images: one row per entry of ``rows`` (each (N,H,W[,C]))."""
    n_cols = max(len(r) for r in rows)
    fig = Figure(figsize=(1.5 + scale * n_cols, 0.4 + scale * len(rows)))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(imgs):
                img = imgs[j]
                ax.imshow(
                    img.squeeze(),
                    cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None,
                    vmin=0,
                    vmax=255,
                )
        axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.12, right=0.99, top=0.93 if title else 0.99, bottom=0.01, wspace=0.05, hspace=0.05
    )
    return fig


def line_plot(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> Figure:
    """One line per entry of ``series`` (label -> (x, y))."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def grouped_bars(table, title: str, value: str = "kid_mean", error: str = "kid_std") -> Figure:
    """Bars of ``value`` per client, one colour per method, one panel per phase."""
    table = (
        table.groupby(["phase", "client", "method"], sort=False)[[value, error]]
        .mean()
        .reset_index()
    )
    phases = list(dict.fromkeys(table["phase"]))
    fig = Figure(figsize=(max(6.0, 0.6 * table["client"].nunique() + 2), 3.2 * len(phases)))
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    for ax, phase in zip(axes, phases):
        sub = table[table["phase"] == phase]
        clients = sorted(sub["client"].unique())
        methods = list(dict.fromkeys(sub["method"]))
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            rows = sub[sub["method"] == m].set_index("client").reindex(clients)
            x = np.arange(len(clients)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, rows[value], width, yerr=rows[error], label=m, capsize=2)
        ax.set_xticks(range(len(clients)), labels=clients, rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{title}: {phase}", ylabel=value)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=min(len(methods), 6))
    fig.tight_layout()
    return fig
