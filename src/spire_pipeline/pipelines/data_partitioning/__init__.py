"""``data_partitioning``: raw images -> non-IID seen/unseen clients with train/test splits."""

from spire_pipeline.pipelines.data_partitioning.pipeline import create_pipeline

__all__ = ["create_pipeline"]
