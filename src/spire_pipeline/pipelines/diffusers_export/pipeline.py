"""The ``diffusers_export`` pipeline (not in the main job)."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.diffusers_export.nodes import export_diffusers


def create_pipeline(**kwargs) -> Pipeline:
    """The pretrained SPIRE model + personal embeddings -> a diffusers folder."""
    return Pipeline(
        [
            Node(
                export_diffusers,
                inputs=["pretrained_models", "personal_embeddings", "params:diffusers_export"],
                outputs="diffusers_export",
                name="export_diffusers",
            ),
        ]
    )
