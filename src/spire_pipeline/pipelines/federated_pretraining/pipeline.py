"""The ``federated_pretraining`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.federated_pretraining.nodes import (
    client_embeddings_table,
    plot_loss_curves,
    plot_sample_grids,
    pretrain_methods,
    validate_pretrained,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Seen clients' train splits -> one model bundle per method, history, metrics, grids."""
    return Pipeline(
        [
            Node(
                pretrain_methods,
                inputs=["client_splits", "params:federated_pretraining"],
                outputs=["pretrained_models", "pretraining_history", "pretraining_metrics"],
                name="pretrain_methods",
            ),
            Node(
                validate_pretrained,
                inputs=["pretrained_models", "client_splits", "params:federated_pretraining"],
                outputs=["pretraining_validation", "pretraining_validation_metrics"],
                name="validate_pretrained",
            ),
            Node(
                client_embeddings_table,
                inputs="pretrained_models",
                outputs="client_embeddings",
                name="client_embeddings_table",
            ),
            Node(
                plot_sample_grids,
                inputs=[
                    "pretrained_models",
                    "client_splits",
                    "params:federated_pretraining",
                    "params:dataset",
                ],
                outputs="pretraining_sample_grids",
                name="plot_pretraining_sample_grids",
            ),
            Node(
                plot_loss_curves,
                inputs="pretraining_history",
                outputs="pretraining_loss_plot",
                name="plot_pretraining_loss_curves",
            ),
        ]
    )
