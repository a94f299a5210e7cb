"""``reporting``: the tables above -> summary tables, claims check and a report."""

from spire_pipeline.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
