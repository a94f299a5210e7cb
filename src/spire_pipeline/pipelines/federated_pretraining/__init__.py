"""``federated_pretraining``: seen clients' train splits -> backbones and client embeddings."""

from spire_pipeline.pipelines.federated_pretraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
