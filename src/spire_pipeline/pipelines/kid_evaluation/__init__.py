"""``kid_evaluation``: models + clients' test splits -> per-client KID for every method."""

from spire_pipeline.pipelines.kid_evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
