"""Nodes of ``personalize``: thin wrappers over :mod:`spire_pipeline.spire.personalize`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from safetensors.torch import save as safetensors_bytes

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.client_images import ImageSet, fit_images
from spire_pipeline.spire.config import AdaptationConfig, PersonalizeConfig
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.model import resolve_device
from spire_pipeline.spire.personalize import (
    BASE_METHOD,
    chosen_settings,
    personalize,
    split_indices,
)
from spire_pipeline.spire.plots import image_grid, line_plot
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def pretrained_base(pretrained_models: dict) -> ModelBundle:
    """The newest pretrained model that personal embeddings condition (only it is loaded)."""
    if BASE_METHOD not in pretrained_models:
        raise KeyError(
            f"personalize needs the pretrained {BASE_METHOD!r} model; the newest pretrained "
            f"models are {sorted(pretrained_models)}: run the main job with {BASE_METHOD!r} "
            "in federated_pretraining.methods"
        )
    loaded = pretrained_models[BASE_METHOD]
    return loaded() if callable(loaded) else loaded


def embedding_bytes(bundle: ModelBundle) -> int:
    """The size of ``bundle``'s safetensors file (the same bytes the catalog writes)."""
    tensors, meta = bundle.to_tensors()
    return len(safetensors_bytes(tensors, metadata=meta))


def personalize_client(
    personal_images: ImageSet,
    pretrained_models: dict,
    adaptation_choices: pd.DataFrame | None,
    params: dict[str, Any],
    adaptation_params: dict[str, Any],
) -> tuple[dict[str, ModelBundle], pd.DataFrame, dict, dict]:
    """Train a new embedding on the user's images; the backbone stays frozen."""
    cfg = validate_params(PersonalizeConfig, params, "personalize")
    adaptation = validate_params(AdaptationConfig, adaptation_params, "client_adaptation")
    spire = pretrained_base(pretrained_models)
    backbone = spire.backbone_cfg
    images = fit_images(personal_images, backbone.channels, backbone.image_size, cfg.min_images)
    settings = chosen_settings(adaptation, adaptation_choices, cfg)
    local = settings.adaptation.local
    log.info(
        "Personalising %s on %d images from %s: embedding lr %g, %s, init %s (%s)",
        cfg.name,
        len(images),
        personal_images.source,
        local.embedding_lr,
        f"{local.steps} steps" if local.steps else f"{local.epochs} epochs",
        settings.adaptation.embedding_init,
        settings.source,
    )
    result = personalize(
        spire,
        images,
        cfg.name,
        settings,
        cfg.validation_share,
        cfg.validation_every,
        cfg.validation_repeats,
        progress=True,
    )
    size = embedding_bytes(result.bundle)
    curve = result.validation
    log.info(
        "Personalised %s: %d numbers, file %d bytes, %.1f s; held-out DDPM loss %.4f -> %.4f "
        "(%d train / %d held-out images); backbone %s unchanged",
        cfg.name,
        result.trained_params,
        size,
        result.seconds,
        curve["val_loss"].iloc[0],
        curve["val_loss"].iloc[-1],
        result.num_train,
        result.num_val,
        result.bundle.info["backbone_sha"],
    )
    metrics = {
        "val_loss": [{"value": float(v), "step": int(s)} for s, v in curve.values],
        "train_loss": [{"value": v, "step": k + 1} for k, v in enumerate(result.train_losses)],
        "embedding_bytes": {"value": size, "step": 0},
        "trained_params": {"value": result.trained_params, "step": 0},
        "seconds": {"value": result.seconds, "step": 0},
        "num_train": {"value": result.num_train, "step": 0},
        "num_val": {"value": result.num_val, "step": 0},
    }
    _, val_idx = split_indices(len(images), cfg.validation_share, cfg.seed)
    preview = {"heldout": images[val_idx], "initial": result.initial, "bundle": result.bundle}
    return {cfg.name: result.bundle}, curve, metrics, preview


def plot_personal_samples(
    personal_preview: dict, pretrained_models: dict, params: dict[str, Any]
) -> Figure:
    """Held-out real images, then samples before (initial embedding) and after personalising."""
    cfg = validate_params(PersonalizeConfig, params, "personalize")
    spire = pretrained_base(pretrained_models)
    model, _ = spire.build(None)
    device = resolve_device(cfg.device)
    n = cfg.grid_samples
    emb = personal_preview["bundle"].embeddings[cfg.name]
    rows = [personal_preview["heldout"][:n]]
    for e in (personal_preview["initial"], emb):
        rows.append(
            generate_from(
                model, e, spire.backbone_cfg, spire.diffusion_cfg, n, cfg.seed, device=device
            )
        )
    return image_grid(
        rows,
        ["held-out real", "before", "after"],
        title=f"{cfg.name}: held-out images, samples before and after personalising "
        f"(seed {cfg.seed})",
    )


def plot_personal_validation(personal_validation: pd.DataFrame, params: dict[str, Any]) -> Figure:
    """The held-out DDPM loss over the training steps."""
    cfg = validate_params(PersonalizeConfig, params, "personalize")
    return line_plot(
        {cfg.name: (personal_validation["step"], personal_validation["val_loss"])},
        title=f"{cfg.name}: held-out DDPM loss while personalising (fixed noise)",
        xlabel="training step",
        ylabel="DDPM loss (MSE of predicted noise, lower is better)",
    )
