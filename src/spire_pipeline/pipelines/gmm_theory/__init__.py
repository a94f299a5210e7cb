"""``gmm_theory``: the mixing weight of a two-component Gaussian mixture, recovered by gradient
descent on the DDPM loss, against the true and maximum-likelihood weights (DESIGN claim 5)."""

from spire_pipeline.pipelines.gmm_theory.pipeline import create_pipeline

__all__ = ["create_pipeline"]
