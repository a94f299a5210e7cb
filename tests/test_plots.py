"""The project's figures: one colour per method everywhere, labels in words, nothing clipped,
readable loss curves, class names where the dataset has them."""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from spire_pipeline.spire import plots
from spire_pipeline.spire.methods import ADAPTATION_METHODS, PRETRAINING_METHODS
from spire_pipeline.spire.plots import heatmap, method_colour

FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
EXTRACTOR = "efficientnet_lite0_64px"
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- synthetic tables


def kid_table() -> pd.DataFrame:
    rows = []
    for client, role in (("seen_00", "seen"), ("seen_01", "seen"), ("unseen_00", "unseen")):
        for method in ("spire", "fedavg"):
            rows.append((client, role, method, "pretrained"))
        if role == "unseen":
            rows += [(client, role, m, "adapted") for m in ("lora", "spire", "full_finetune")]
        else:
            rows += [(client, role, m, "after_adaptation") for m in ("full_finetune", "spire")]
    table = pd.DataFrame(rows, columns=["client", "role", "method", "phase"])
    table["kid_mean"] = RNG.uniform(5, 30, len(table))
    table["kid_std"] = RNG.uniform(0.5, 2, len(table))
    table["extractor"] = EXTRACTOR
    return table


def reference_table() -> pd.DataFrame:
    return pd.DataFrame(
        {"client": ["seen_00", "seen_01"], "kid_mean": [-0.3, 0.5], "extractor": EXTRACTOR}
    )


def unseen_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["spire", "full_finetune", "lora", "scratch"],
            "trained_params": [64, 619_697, 48_128, 619_697],
            "kid_median": [6.9, 5.9, 5.8, 18.8],
            "extractor": EXTRACTOR,
        }
    )


def partition_table() -> pd.DataFrame:
    counts = np.zeros((3, 10), dtype=int)
    counts[0, [4, 6]] = 150
    counts[1, [2, 7]] = 150
    counts[2, [1, 8]] = 56
    table = pd.DataFrame(counts, columns=[f"class_{k}" for k in range(10)])
    table.insert(0, "role", ["seen", "seen", "unseen"])
    table.insert(0, "client", ["seen_00", "seen_01", "unseen_00"])
    return table


def long_history(rounds: int = 700) -> pd.DataFrame:
    r = np.arange(rounds)
    return pd.concat(
        pd.DataFrame(
            {
                "method": m,
                "round": r,
                "loss_mean": 0.05 + 0.7 * np.exp(-r / 60) + RNG.uniform(0, 0.01, rounds),
            }
        )
        for m in ("fedavg", "spire")
    )


def gmm_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = []
    run = 0
    for dim in (1, 16, 256):
        for n in (100, 1000):
            for rep in range(3):
                errs = RNG.uniform(0.001, 0.05, 4) / np.sqrt(n / 100)
                rows.append(
                    {
                        "run": run,
                        "dim": dim,
                        "n": n,
                        "replicate": rep,
                        "err_ddpm_true": errs[0],
                        "err_mle_true": errs[1],
                        "err_label_true": errs[2],
                        "err_ddpm_mle": errs[3] / 10,
                        "b_true": -0.42,
                        "b_mle": -0.42 + errs[1],
                    }
                )
                run += 1
    results = pd.DataFrame(rows)
    slopes = pd.DataFrame(
        [
            {"axis": axis, "error": e, "slope": s, "intercept": -1.0, "ci_low": -1, "ci_high": 1}
            for axis, s in (("dim", 0.01), ("n", -0.5))
            for e in ("err_ddpm_true", "err_mle_true", "err_label_true", "err_ddpm_mle")
        ]
    )
    iters = 10
    trajectories = pd.DataFrame(
        {
            "run": np.repeat(results["run"], iters + 1),
            "iteration": np.tile(np.arange(iters + 1), len(results)),
            "b": np.tile(-0.42 * (1 - np.exp(-np.arange(iters + 1))), len(results)),
        }
    ).merge(results[["run", "dim", "n", "replicate"]], on="run")
    return results, slopes, trajectories


def sweep_table() -> pd.DataFrame:
    rows = [
        {"method": m, "client": c, "lr": lr, "epochs": e, "kid_mean": RNG.uniform(3, 30)}
        for m in ("spire", "lora")
        for c in ("u0", "u1")
        for lr in (1e-3, 1e-1)
        for e in (1, 5)
    ]
    return pd.DataFrame(rows).assign(extractor=EXTRACTOR)


def images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)


@functools.cache
def every_figure() -> dict[str, Figure]:
    """One of each figure the pipelines draw, from small synthetic tables."""
    results, slopes, trajectories = gmm_tables()
    figs = {
        "partition_heatmap": plots.partition_heatmap(partition_table(), FASHION),
        "loss_curves": plots.loss_curves(long_history()),
        "kid_bars": plots.kid_bars(kid_table(), reference_table()),
        "efficiency": plots.efficiency(unseen_table(), reference_table()),
        "error_vs_dimension": plots.error_vs_dimension(results, slopes),
        "error_vs_sample_size": plots.error_vs_sample_size(results, slopes),
        "b_convergence": plots.b_convergence(trajectories, results),
        "kid_sample_grid": plots.kid_sample_grid(
            "unseen_00",
            images(4),
            [("fedavg", "pretrained", images(4)), ("full_finetune", "adapted", images(4))],
            [1, 8],
            FASHION,
        ),
        "pretraining_sample_grid": plots.pretraining_sample_grid(
            "spire",
            [("seen_00", [0, 9], images(7)), ("seen_01", [4, 6], images(7))],
            n_real=3,
            class_names=FASHION,
        ),
    }
    figs |= {f"sweep_{m}": f for m, f in plots.sweep_heatmaps(sweep_table()).items()}
    return figs


# ----------------------------------------------------------------------------- helpers


def drawn_texts(fig: Figure) -> dict[Text, object]:
    """Every non-empty text that a draw of ``fig`` renders, with its window extent."""
    drawn: dict[Text, object] = {}
    draw = Text.draw

    def recording_draw(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn[self] = self.get_window_extent(renderer)

    canvas = FigureCanvasAgg(fig)
    with mock.patch.object(Text, "draw", recording_draw):
        canvas.draw()
    return drawn


def clipped_texts(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """Drawn texts whose extent leaves the figure."""
    box = fig.bbox
    return [
        f"{t.get_text()!r} at {ext.bounds} outside {box.bounds}"
        for t, ext in drawn_texts(fig).items()
        if ext.x0 < box.x0 - tolerance
        or ext.y0 < box.y0 - tolerance
        or ext.x1 > box.x1 + tolerance
        or ext.y1 > box.y1 + tolerance
    ]


# ----------------------------------------------------------------------------- palette


def test_every_method_has_its_own_colour_and_unknown_names_a_stable_one() -> None:
    methods = set(PRETRAINING_METHODS) | set(ADAPTATION_METHODS)
    colours = {m: method_colour(m) for m in methods}
    assert len(set(colours.values())) == len(methods), colours
    assert method_colour("not_a_method") == method_colour("not_a_method")
    assert method_colour("not_a_method") not in colours.values()


def test_a_method_keeps_its_colour_across_panels_and_figures() -> None:
    fig = plots.kid_bars(kid_table(), reference_table())
    seen: dict[str, set[str]] = {}
    for ax in fig.axes:
        for container in ax.containers:
            label = container.get_label()
            if hasattr(container, "patches") and not label.startswith("_"):
                seen.setdefault(label, set()).update(
                    to_hex(p.get_facecolor()) for p in container.patches
                )
    assert {"spire", "fedavg", "lora", "full_finetune"} <= set(seen)
    assert all(len(c) == 1 for c in seen.values()), seen  # same colour in every panel
    for method, (colour,) in seen.items():
        assert colour == to_hex(method_colour(method)), method
    # the scatter of the efficiency plot uses the same colours
    eff = plots.efficiency(unseen_table())
    scatter = {
        to_hex(c.get_facecolor()[0]) for c in eff.axes[0].collections if len(c.get_offsets())
    }
    assert to_hex(method_colour("spire")) in scatter and to_hex(method_colour("lora")) in scatter
    # and the loss curves
    lines = {
        ln.get_label(): to_hex(ln.get_color())
        for ln in plots.loss_curves(long_history()).axes[0].get_lines()
    }
    assert lines["spire"] == to_hex(method_colour("spire"))


# ----------------------------------------------------------------------------- labels and layout


@pytest.mark.parametrize("name", sorted(every_figure()))
def test_no_text_is_clipped_and_every_figure_has_a_title(name: str) -> None:
    fig = every_figure()[name]
    texts = drawn_texts(fig)
    assert len(texts) >= 3, name  # the recording sees the figure's texts
    clipped = clipped_texts(fig)
    assert not clipped, clipped
    titles = [fig._suptitle.get_text()] if fig._suptitle else []
    titles += [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), name


@pytest.mark.parametrize("name", sorted(every_figure()))
def test_data_axes_are_labelled_in_words(name: str) -> None:
    fig = every_figure()[name]
    for ax in fig.axes:
        if ax.images and not ax.get_xlabel():  # an image cell of a sample grid
            continue
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel(), name
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())


def test_kid_axes_say_direction_and_features() -> None:
    fig = plots.kid_bars(kid_table(), reference_table())
    assert all("lower is better" in ax.get_ylabel() for ax in fig.axes)
    assert "efficientnet_lite0 features at 64 px" in fig._suptitle.get_text()
    eff = plots.efficiency(unseen_table())
    assert "lower is better" in eff.axes[0].get_ylabel()
    assert "×10" not in eff.axes[0].get_ylabel()  # values are KID as computed


def test_reference_line_is_drawn_at_the_median_real_against_real_kid() -> None:
    fig = plots.kid_bars(kid_table(), reference_table())
    for ax in fig.axes:
        (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert line.get_ydata()[0] == pytest.approx(0.1)
    no_ref = plots.kid_bars(kid_table())
    assert not [ln for ax in no_ref.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]


def test_a_clipped_label_is_caught() -> None:
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().set_ylabel("a label that hangs off the left edge", fontsize=20)
    assert clipped_texts(fig)


def test_sample_grid_title_is_above_the_first_row_and_labels_are_whole() -> None:
    long = "full_finetune, pretrained and then some"
    fig = plots.image_grid([images(4), images(4)], ["real (test split)", long], title="t" * 60)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    top_row = max(ax.get_window_extent(renderer).y1 for ax in fig.axes)
    assert title.y0 >= top_row
    assert not clipped_texts(fig)
    assert long in {t.get_text() for t in fig.texts}


def test_loss_curves_are_smoothed_lines_on_a_log_axis() -> None:
    fig = plots.loss_curves(long_history(700))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    bold = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert {ln.get_label() for ln in bold} == {"spire", "fedavg"}
    for ln in ax.get_lines():
        assert ln.get_marker() in ("None", None, "")  # no 700 markers
    raw = long_history(700).query("method == 'spire'")["loss_mean"].to_numpy()
    (spire,) = [ln for ln in bold if ln.get_label() == "spire"]
    assert np.std(np.diff(spire.get_ydata())) < np.std(np.diff(raw))  # smoothed
    assert "moving average" in ax.get_xlabel()


def test_classes_are_named_when_the_dataset_names_them() -> None:
    named = plots.partition_heatmap(partition_table(), FASHION)
    assert [t.get_text() for t in named.axes[0].get_xticklabels()] == FASHION
    numbered = plots.partition_heatmap(partition_table())
    assert [t.get_text() for t in numbered.axes[0].get_xticklabels()] == [str(k) for k in range(10)]
    grid = plots.pretraining_sample_grid("spire", [("seen_00", [4, 6], images(5))], 3, FASHION)
    assert "seen_00: Coat, Shirt" in {t.get_text() for t in grid.texts}
    grid = plots.pretraining_sample_grid("spire", [("seen_00", [4, 6], images(5))], 3)
    assert "seen_00: classes 4, 6" in {t.get_text() for t in grid.texts}


# ----------------------------------------------------------------------------- heat map


def _cell_texts(fig):
    ax = fig.axes[0]
    return {t.get_text(): t.get_color() for t in ax.texts}


def test_nan_cells_carry_the_given_label_and_others_their_value() -> None:
    values = np.array([[1.0, np.nan], [3.0, 4.0]])
    fig = heatmap(values, ["a", "b"], ["x", "y"], "t", fmt="{:.1f}", nan_text="diverged")
    assert set(_cell_texts(fig)) == {"1.0", "diverged", "3.0", "4.0"}
    fig = heatmap(values, ["a", "b"], ["x", "y"], "t", fmt="{:.1f}")
    assert set(_cell_texts(fig)) == {"1.0", "3.0", "4.0"}


def test_label_colour_contrasts_with_the_cell_for_either_colour_map_direction() -> None:
    values = np.array([[0.0, 10.0]])
    for cmap, light in (("viridis", "10.0"), ("magma_r", "0.0")):
        colours = _cell_texts(heatmap(values, ["a"], ["lo", "hi"], "t", fmt="{:.1f}", cmap=cmap))
        dark = ({"0.0", "10.0"} - {light}).pop()
        assert colours[light] == "black", cmap
        assert colours[dark] == "white", cmap
