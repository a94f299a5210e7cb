"""Matplotlib figures of the project (no pyplot state: figures are returned).

One palette (:mod:`.style`), generic figures (:mod:`.basic`), the experiments' figures
(:mod:`.results`) and the theory's (:mod:`.theory`).
"""

from spire_pipeline.spire.plots.basic import heatmap, image_grid, line_plot
from spire_pipeline.spire.plots.results import (
    efficiency,
    kid_bars,
    kid_sample_grid,
    loss_curves,
    partition_heatmap,
    pretraining_sample_grid,
    reference_level,
    sweep_heatmaps,
)
from spire_pipeline.spire.plots.style import (
    KNOWN_METHODS,
    METHOD_COLOURS,
    class_label,
    class_list,
    kid_label,
    method_colour,
    method_order,
)
from spire_pipeline.spire.plots.theory import (
    ERROR_LABELS,
    b_convergence,
    error_vs_dimension,
    error_vs_sample_size,
)

__all__ = [
    "ERROR_LABELS",
    "KNOWN_METHODS",
    "METHOD_COLOURS",
    "b_convergence",
    "class_label",
    "class_list",
    "efficiency",
    "error_vs_dimension",
    "error_vs_sample_size",
    "heatmap",
    "image_grid",
    "kid_bars",
    "kid_label",
    "kid_sample_grid",
    "line_plot",
    "loss_curves",
    "method_colour",
    "method_order",
    "partition_heatmap",
    "pretraining_sample_grid",
    "reference_level",
    "sweep_heatmaps",
]
