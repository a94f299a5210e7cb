"""The shared heat map: readable cell labels and marked missing cells."""

import numpy as np

from spire_pipeline.spire.plots import heatmap


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
