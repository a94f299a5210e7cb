"""``client_adaptation``: pretrained models + unseen clients -> adapted parameters per method."""

from spire_pipeline.pipelines.client_adaptation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
