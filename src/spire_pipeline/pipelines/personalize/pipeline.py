"""The ``personalize`` pipeline (not in the main job; run it after one)."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.personalize.nodes import (
    personalize_client,
    plot_personal_samples,
    plot_personal_validation,
)


def create_pipeline(**kwargs) -> Pipeline:
    """A user's images + the pretrained SPIRE model -> a personal embedding, curve, grid."""
    return Pipeline(
        [
            Node(
                personalize_client,
                inputs=[
                    "personal_images",
                    "pretrained_models",
                    "personalize_choices",
                    "params:personalize",
                    "params:client_adaptation",
                ],
                outputs=[
                    "personal_embeddings",
                    "personal_validation",
                    "personal_metrics",
                    "personal_preview",
                ],
                name="personalize_client",
            ),
            Node(
                plot_personal_samples,
                inputs=["personal_preview", "pretrained_models", "params:personalize"],
                outputs="personal_sample_grid",
                name="plot_personal_samples",
            ),
            Node(
                plot_personal_validation,
                inputs=["personal_validation", "params:personalize"],
                outputs="personal_loss_plot",
                name="plot_personal_validation",
            ),
        ]
    )
