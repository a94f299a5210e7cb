"""The ``data_partitioning`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.data_partitioning.nodes import (
    partition_clients,
    partition_metrics,
    plot_partition_heatmap,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Raw images + labels -> client splits, partition table, heat map and statistics."""
    return Pipeline(
        [
            Node(
                partition_clients,
                inputs=["raw_train", "raw_test", "params:data_partitioning"],
                outputs=["client_splits", "partition_table"],
                name="partition_clients",
            ),
            Node(
                partition_metrics,
                inputs="partition_table",
                outputs="partition_metrics",
                name="partition_metrics",
            ),
            Node(
                plot_partition_heatmap,
                inputs=["partition_table", "params:dataset"],
                outputs="partition_heatmap",
                name="plot_partition_heatmap",
            ),
        ]
    )
