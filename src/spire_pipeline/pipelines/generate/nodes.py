"""Nodes of ``generate``: thin wrappers over :mod:`spire_pipeline.spire.serving`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.client_images import tile
from spire_pipeline.spire.config import GenerateConfig
from spire_pipeline.spire.serving import model_for_client, sample_client
from spire_pipeline.spire.validation import ParameterError, validate_params

log = logging.getLogger(__name__)


def generate_client_samples(
    pretrained_models: dict,
    adapted_models: dict | None,
    personal_embeddings: dict,
    params: dict[str, Any],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``generate.num`` samples for ``generate.client``: one PNG each, and a grid of them."""
    cfg = validate_params(GenerateConfig, params, "generate")
    if cfg.client is None:
        raise ParameterError(
            "Invalid parameters: parameter generate.client = None: name the client to sample "
            "(a seen client, an adapted unseen client or a personalised one)"
        )
    # only the adapted models of this method are loaded
    adapted = {k: v for k, v in (adapted_models or {}).items() if k.split("__")[0] == cfg.method}
    served = model_for_client(
        cfg.client, cfg.method, resolve(pretrained_models), resolve(adapted), personal_embeddings
    )
    images = sample_client(served, cfg, progress=True)
    log.info(
        "Generated %d samples for %s client %s (%s), seed %d, sampler %s, %s steps",
        len(images),
        served.kind,
        cfg.client,
        cfg.method,
        cfg.seed,
        cfg.sampler or served.diffusion_cfg.sampler,
        cfg.steps or served.diffusion_cfg.sampler_steps,
    )
    samples = {f"{cfg.client}_{i:03d}": img for i, img in enumerate(images)}
    return samples, tile(images, cfg.columns)
