"""``robustness_sweep``: KID over a learning-rate x epochs grid per adaptation method."""

from spire_pipeline.pipelines.robustness_sweep.pipeline import create_pipeline

__all__ = ["create_pipeline"]
