"""spire-pipeline: SPIRE personalized federated diffusion models as a Kedro project."""

__version__ = "0.1.0"
