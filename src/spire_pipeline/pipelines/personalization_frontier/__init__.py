"""``personalization_frontier``: where claim 2 holds, over schemes, shots, compute, federation
size and SPIRE variants (not part of the main job)."""

from spire_pipeline.pipelines.personalization_frontier.pipeline import create_pipeline

__all__ = ["create_pipeline"]
