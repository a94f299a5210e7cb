"""The ``robustness_sweep`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.robustness_sweep.nodes import plot_sweep_heatmaps, run_sweep


def create_pipeline(**kwargs) -> Pipeline:
    """Pretrained models + unseen clients -> KID per (method, lr, epochs), heat maps, summary."""
    return Pipeline(
        [
            Node(
                run_sweep,
                inputs=[
                    "client_splits",
                    "pretrained_models",
                    "params:robustness_sweep",
                    "params:client_adaptation",
                    "params:kid_evaluation",
                ],
                outputs=["sweep_table", "sweep_summary", "sweep_metrics"],
                name="run_robustness_sweep",
            ),
            Node(
                plot_sweep_heatmaps,
                inputs="sweep_table",
                outputs="sweep_heatmaps",
                name="plot_sweep_heatmaps",
            ),
        ]
    )
