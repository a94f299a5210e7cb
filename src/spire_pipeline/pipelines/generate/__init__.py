"""``generate``: samples for a named client (seen, adapted or personalised) as PNGs and a grid."""

from spire_pipeline.pipelines.generate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
