"""``diffusers_export``: the pretrained SPIRE model and client embeddings in diffusers' format."""

from spire_pipeline.pipelines.diffusers_export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
