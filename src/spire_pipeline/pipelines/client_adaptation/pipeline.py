"""The ``client_adaptation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.client_adaptation.nodes import adapt_unseen_clients


def create_pipeline(**kwargs) -> Pipeline:
    """Pretrained models + unseen clients' train splits -> adapted parameters and their cost."""
    return Pipeline(
        [
            Node(
                adapt_unseen_clients,
                inputs=["client_splits", "pretrained_models", "params:client_adaptation"],
                outputs=["adapted_models", "adaptation_table", "adaptation_metrics"],
                name="adapt_unseen_clients",
            ),
        ]
    )
