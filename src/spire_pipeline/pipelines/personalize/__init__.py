"""``personalize``: a user's own images -> a new embedding on the pretrained SPIRE backbone."""

from spire_pipeline.pipelines.personalize.pipeline import create_pipeline

__all__ = ["create_pipeline"]
