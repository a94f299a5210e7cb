"""A pretrained method's weights as one flat tensor dict (stored as safetensors).

Keys: ``backbone/<param>`` (the shared model), ``embedding/<client>`` (SPIRE, centralized),
``head/<client>/<param>`` (FedPer), ``local/<client>/<param>`` (each client's own model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from diffusers import UNet2DModel

from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig
from spire_pipeline.spire.model import build_backbone, embedding_dim, load_partial

Tensors = dict[str, torch.Tensor]
#: key prefix of per-client tensors -> the bundle attribute holding them
_PER_CLIENT = {"head": "heads", "local": "local"}


@dataclass
class ModelBundle:
    """Everything a method learned, plus the configuration needed to rebuild it."""

    method: str
    backbone_cfg: BackboneConfig
    diffusion_cfg: DiffusionConfig
    backbone: Tensors = field(default_factory=dict)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, Tensors] = field(default_factory=dict)
    local: dict[str, Tensors] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def clients(self) -> list[str]:
        """Clients this bundle holds personal parameters for."""
        return sorted(set(self.embeddings) | set(self.heads) | set(self.local))

    def build(self, client: str | None = None) -> tuple[UNet2DModel, torch.Tensor | None]:
        """The model to use for ``client`` and its conditioning vector (``None``: zeros)."""
        model = build_backbone(self.backbone_cfg)
        if self.local:
            if client not in self.local:
                raise KeyError(f"{self.method}: no local model for client {client!r}")
            load_partial(model, self.local[client])
        else:
            load_partial(model, self.backbone)
            if client in self.heads:
                load_partial(model, self.heads[client])
        model.eval().requires_grad_(False)
        emb = self.embeddings.get(client) if client is not None else None
        if emb is not None and emb.numel() != embedding_dim(model):
            raise ValueError(f"{self.method}: embedding of {client} has the wrong size")
        return model, emb

    def to_tensors(self) -> tuple[Tensors, dict[str, str]]:
        """Flat tensors and string metadata (for safetensors)."""
        out: Tensors = {f"backbone/{k}": v for k, v in self.backbone.items()}
        out |= {f"embedding/{c}": v for c, v in self.embeddings.items()}
        for prefix, per_client in (("head", self.heads), ("local", self.local)):
            for c, state in per_client.items():
                out |= {f"{prefix}/{c}/{k}": v for k, v in state.items()}
        out = {k: v.detach().contiguous().cpu() for k, v in out.items()}
        meta = {
            "method": self.method,
            "backbone_cfg": self.backbone_cfg.model_dump_json(),
            "diffusion_cfg": self.diffusion_cfg.model_dump_json(),
            "info": json.dumps(self.info),
        }
        return out, meta

    @classmethod
    def from_tensors(cls, tensors: Tensors, meta: dict[str, str]) -> ModelBundle:
        """Inverse of :meth:`to_tensors`."""
        b = cls(
            method=meta["method"],
            backbone_cfg=BackboneConfig.model_validate_json(meta["backbone_cfg"]),
            diffusion_cfg=DiffusionConfig.model_validate_json(meta["diffusion_cfg"]),
            info=json.loads(meta.get("info", "{}")),
        )
        for key, v in tensors.items():
            kind, rest = key.split("/", 1)
            if kind == "backbone":
                b.backbone[rest] = v
            elif kind == "embedding":
                b.embeddings[rest] = v
            else:
                client, name = rest.split("/", 1)
                getattr(b, _PER_CLIENT[kind]).setdefault(client, {})[name] = v
        return b
