"""The ``generate`` pipeline (not in the main job)."""

from kedro.pipeline import Node, Pipeline

from spire_pipeline.pipelines.generate.nodes import generate_client_samples


def create_pipeline(**kwargs) -> Pipeline:
    """Pretrained, adapted and personal models -> PNG samples and a grid for one client."""
    return Pipeline(
        [
            Node(
                generate_client_samples,
                inputs=[
                    "pretrained_models",
                    "generate_adapted_models",
                    "personal_embeddings",
                    "params:generate",
                ],
                outputs=["generated_samples", "generated_grid"],
                name="generate_client_samples",
            ),
        ]
    )
