"""The ``personalization_frontier`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.personalization_frontier.nodes import (
    plot_frontier,
    run_frontier_grid,
    summarize_frontier,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Raw images + the main job's adaptation choices -> per-setting KID gap table and figure."""
    return Pipeline(
        [
            Node(
                run_frontier_grid,
                inputs=[
                    "raw_train",
                    "raw_test",
                    "frontier_choices",
                    "params:personalization_frontier",
                    "params:data_partitioning",
                    "params:federated_pretraining",
                    "params:client_adaptation",
                    "params:kid_evaluation",
                ],
                outputs=["frontier_kid", "frontier_guidance"],
                name="run_frontier_grid",
            ),
            Node(
                summarize_frontier,
                inputs=["frontier_kid", "params:personalization_frontier"],
                outputs=["frontier_table", "frontier_metrics"],
                name="summarize_frontier",
            ),
            Node(
                plot_frontier,
                inputs="frontier_table",
                outputs="frontier_figure",
                name="plot_frontier",
            ),
        ]
    )
