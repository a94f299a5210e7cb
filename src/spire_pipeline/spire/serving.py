"""The model that serves a named client, and samples from it.

A client is *seen* (it has an embedding, head or model in a pretrained bundle), *adapted* (an
unseen client that ``client_adaptation`` adapted a method to: ``"<method>__<client>"``), or
*personal* (an embedding that ``personalize`` trained on the user's images). A method whose
model ignores the client (``fedavg``) serves any name with its one shared model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers import UNet2DModel

from spire_pipeline.spire.adaptation import build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig, GenerateConfig
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING
from spire_pipeline.spire.model import resolve_device
from spire_pipeline.spire.personalize import model_sha

Kind = Literal["seen", "adapted", "personal", "shared"]


@dataclass
class ClientModel:
    """What serves one client: a model, its conditioning vector and its configuration."""

    client: str
    method: str
    kind: Kind
    model: UNet2DModel
    embedding: torch.Tensor | None
    backbone_cfg: BackboneConfig
    diffusion_cfg: DiffusionConfig


class UnknownClientError(KeyError):
    """No model serves the client; the message lists the clients that can be served."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def known_clients(
    method: str,
    pretrained: dict[str, ModelBundle],
    adapted: dict[str, ModelBundle] | None = None,
    personal: dict[str, ModelBundle] | None = None,
) -> dict[str, Kind]:
    """The clients ``method`` can serve by name, with their kind."""
    out: dict[str, Kind] = {}
    if method in pretrained:
        out |= dict.fromkeys(pretrained[method].clients(), "seen")
    for key in adapted or {}:
        m, client = key.split("__", 1)
        if m == method:
            out[client] = "adapted"
    for client, b in (personal or {}).items():
        if b.method == method:
            out[client] = "personal"
    return out


def model_for_client(
    client: str,
    method: str,
    pretrained: dict[str, ModelBundle],
    adapted: dict[str, ModelBundle] | None = None,
    personal: dict[str, ModelBundle] | None = None,
) -> ClientModel:
    """The model ``method`` serves ``client`` with (see the module docstring)."""
    adapted, personal = adapted or {}, personal or {}
    if method not in PRETRAINING and method not in ADAPTATION:
        known = sorted(set(PRETRAINING) | set(ADAPTATION))
        raise UnknownClientError(f"unknown method {method!r}; one of {known}")
    bundle = pretrained.get(method) if method in PRETRAINING else None
    if bundle is not None and client in bundle.clients():
        model, emb = bundle.build(client)
        return _served(client, method, "seen", model, emb, bundle)
    key = f"{method}__{client}"
    if method in ADAPTATION and key in adapted:
        model, emb = build_adapted(adapted[key], pretrained, client)
        return _served(client, method, "adapted", model, emb, adapted[key])
    if client in personal and personal[client].method == method:
        return _personal(client, personal[client], pretrained)
    if bundle is not None and not PRETRAINING[method].per_client:
        model, emb = bundle.build(None)
        return _served(client, method, "shared", model, emb, bundle)
    names = known_clients(method, pretrained, adapted, personal)
    listed = ", ".join(f"{c} ({k})" for c, k in sorted(names.items()))
    listed = listed or "none (run the main job, or personalize one)"
    raise UnknownClientError(f"no {method} model for client {client!r}; known clients: {listed}")


def _personal(client: str, emb_bundle: ModelBundle, pretrained: dict[str, ModelBundle]):
    base = emb_bundle.info.get("base")
    if base not in pretrained:
        raise UnknownClientError(
            f"personal embedding {client!r} needs the pretrained {base!r} model: run the main job"
        )
    bundle = pretrained[base]
    check_backbone(client, emb_bundle, bundle)
    model, _ = bundle.build(None)
    return _served(
        client, emb_bundle.method, "personal", model, emb_bundle.embeddings[client], bundle
    )


def check_backbone(client: str, emb_bundle: ModelBundle, bundle: ModelBundle) -> None:
    """Refuse an embedding trained on another backbone than ``bundle``'s."""
    trained_on = emb_bundle.info.get("backbone_sha")
    now = model_sha(bundle)
    if trained_on != now:
        raise ValueError(
            f"the embedding of {client!r} was trained on backbone {trained_on}, but the newest "
            f"pretrained {bundle.method} backbone is {now}: personalise {client!r} again"
        )


def _served(client, method, kind, model, emb, bundle: ModelBundle) -> ClientModel:
    return ClientModel(client, method, kind, model, emb, bundle.backbone_cfg, bundle.diffusion_cfg)


def sample_client(served: ClientModel, cfg: GenerateConfig, progress: bool = False) -> np.ndarray:
    """``cfg.num`` uint8 images for the served client (same seed, same images on one device)."""
    diffusion = served.diffusion_cfg
    if cfg.steps is not None and cfg.steps > diffusion.num_train_timesteps:
        raise ValueError(
            f"generate.steps = {cfg.steps}: at most the {diffusion.num_train_timesteps} "
            "timesteps the model was trained with"
        )
    if cfg.sampler is not None:
        diffusion = diffusion.model_copy(update={"sampler": cfg.sampler})
    return generate_from(
        served.model,
        served.embedding,
        served.backbone_cfg,
        diffusion,
        cfg.num,
        cfg.seed,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        progress=progress,
        desc=f"sample {served.method}:{served.client}",
        device=resolve_device(cfg.device),
        guidance=cfg.guidance,
    )
