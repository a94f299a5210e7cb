"""Sampling from a trained model for one client (the project's single sampler entry point)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import UNet2DModel

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig
from spire_pipeline.spire.diffusion import make_sampler, make_scheduler, sample
from spire_pipeline.spire.model import embedding_dim


def generate_from(
    model: UNet2DModel,
    emb: torch.Tensor | None,
    backbone_cfg: BackboneConfig,
    diffusion_cfg: DiffusionConfig,
    num: int,
    seed: int,
    steps: int | None = None,
    batch_size: int = 100,
    progress: bool = False,
    desc: str = "sampling",
    device: torch.device | str | None = None,
    guidance: float = 1.0,
    precision: str = "fp32",
) -> np.ndarray:
    """``num`` uint8 images from ``model`` conditioned on ``emb`` (``None``: a zero embedding).

    Runs on ``device`` (default: where the model is), the network in ``precision``.
    ``guidance``: personalisation guidance towards ``emb``
    (:func:`~spire_pipeline.spire.diffusion.guided`; 1 = none).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    sampler = make_sampler(make_scheduler(diffusion_cfg), diffusion_cfg, steps)
    cond = torch.zeros(embedding_dim(model), device=device) if emb is None else emb.to(device)
    size = backbone_cfg.image_size

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    return sample(
        denoise,
        sampler,
        num,
        (backbone_cfg.channels, size, size),
        cond,
        seed,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        device=device,
        guidance=guidance if emb is not None else 1.0,
        precision=precision,
    )


def generate(
    bundle: ModelBundle,
    client: str | None,
    num: int,
    seed: int,
    steps: int | None = None,
    batch_size: int = 100,
    progress: bool = False,
    guidance: float = 1.0,
    precision: str = "fp32",
) -> np.ndarray:
    """``num`` uint8 images from ``bundle`` for ``client`` (``None``: its shared model), with
    personalisation ``guidance`` (1 = none)."""
    model, emb = bundle.build(client)
    return generate_from(
        model,
        emb,
        bundle.backbone_cfg,
        bundle.diffusion_cfg,
        num,
        seed,
        steps,
        batch_size,
        progress,
        desc=f"sample {bundle.method}:{client}",
        guidance=guidance,
        precision=precision,
    )
