"""The ``client_adaptation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.client_adaptation.nodes import adapt_unseen_clients, tune_adaptation


def create_pipeline(**kwargs) -> Pipeline:
    """Pretrained models + tuning clients -> per-method choices; + evaluation clients' train
    splits -> adapted parameters and their cost."""
    return Pipeline(
        [
            Node(
                tune_adaptation,
                inputs=[
                    "client_splits",
                    "pretrained_models",
                    "params:client_adaptation",
                    "params:kid_evaluation",
                ],
                outputs=["adaptation_choices", "tuning_table", "tuning_inits", "tuning_metrics"],
                name="tune_adaptation",
            ),
            Node(
                adapt_unseen_clients,
                inputs=[
                    "client_splits",
                    "pretrained_models",
                    "adaptation_choices",
                    "params:client_adaptation",
                ],
                outputs=["adapted_models", "adaptation_table", "adaptation_metrics"],
                name="adapt_unseen_clients",
            ),
        ]
    )
