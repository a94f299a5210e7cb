"""Generic figures: an annotated heat map, a grid of images, lines (no pyplot state: figures
are returned, laid out so that no label is cut)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from spire_pipeline.spire.plots.style import legend_outside, new_figure, text_width_in


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
    rotate_columns: bool = False,
    nan_labels: np.ndarray | None = None,
) -> Figure:
    """An annotated heat map (rows x columns); NaN cells are blank, labelled ``nan_text`` (or
    by ``nan_labels[i, j]`` when given)."""
    values = np.asarray(values, dtype=float)
    label_w = max((text_width_in(r, 8) for r in row_labels), default=0.5)
    col_h = max((text_width_in(c, 9) for c in col_labels), default=0.2) if rotate_columns else 0
    width = max(4.8, 2.2 + label_w + 0.6 * len(col_labels), text_width_in(title, 12) + 0.6)
    fig = new_figure(width, 1.6 + 0.7 * col_h + 0.34 * len(row_labels))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    if rotate_columns:
        ax.tick_params(axis="x", labelrotation=40)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")
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
    return fig


def _text_colour(rgba: Sequence[float]) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luma)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def image_grid(
    rows: Sequence[np.ndarray],
    row_labels: Sequence[str],
    title: str = "",
    scale: float = 0.6,
    label_fontsize: float = 8,
    label_colours: Sequence[str | None] = (),
    split_after: int = 0,
) -> Figure:
    """A grid of uint8 images: one row per entry of ``rows`` (each (N,H,W[,C])); with
    ``split_after`` a wider gap follows that many columns (real | generated).

    Laid out in inches: the row labels, the images and the title each get the room they need,
    so nothing is cut and the title never overlaps the first row.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    gap, pad = 0.04 * scale, 0.12
    label_w = max((text_width_in(s, label_fontsize) for s in row_labels), default=0.0)
    title_h = 0.4 if title else 0.0
    split = 0.25 * scale if 0 < split_after < n_cols else 0.0
    grid_w = n_cols * scale + (n_cols - 1) * gap + split
    grid_h = n_rows * scale + (n_rows - 1) * gap
    width = max(label_w + 2 * pad + grid_w + pad, text_width_in(title, 10) + 2 * pad)
    height = title_h + grid_h + 2 * pad
    left = width - pad - grid_w  # grid flush right; labels take the room on its left
    fig = Figure(figsize=(width, height))
    for i, imgs in enumerate(rows):
        y0 = height - pad - title_h - (i + 1) * scale - i * gap
        for j in range(n_cols):
            x0 = left + j * (scale + gap) + (split if j >= split_after else 0.0)
            ax = fig.add_axes((x0 / width, y0 / height, scale / width, scale / height))
            ax.set_axis_off()
            if j < len(imgs):
                img = imgs[j]
                ax.imshow(
                    img.squeeze(),
                    cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None,
                    vmin=0,
                    vmax=255,
                )
        colour = label_colours[i] if i < len(label_colours) else None
        fig.text(
            (left - pad) / width,
            (y0 + scale / 2) / height,
            row_labels[i],
            ha="right",
            va="center",
            fontsize=label_fontsize,
            color=colour or "black",
        )
    if title:
        fig.suptitle(title, fontsize=10, y=1 - pad / height, va="top")
    return fig


def line_plot(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    colours: dict[str, str] | None = None,
    markers: bool = True,
) -> Figure:
    """One line per entry of ``series`` (label -> (x, y)); the legend sits outside the data."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(
            x,
            y,
            marker="o" if markers else None,
            markersize=3,
            label=label,
            color=(colours or {}).get(label),
        )
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig
