"""The shared backbone (a diffusers ``UNet2DModel``) and the per-client embedding table.

A client embedding ``e_k`` enters the UNet like a class embedding
(``class_embed_type="identity"``): it is added to the timestep embedding, so it acts as a bias
in every residual block. Methods that are not conditional pass a zero embedding, so every
method shares one architecture and one parameter count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from diffusers import UNet2DModel
from torch import nn

from spire_pipeline.spire import methods
from spire_pipeline.spire.config import BackboneConfig


def build_backbone(cfg: BackboneConfig, seed: int | None = None) -> UNet2DModel:
    """A UNet for square images, conditioned through an identity class embedding."""
    n = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if cfg.attention:  # attention at the lowest resolution (and in the mid block) only
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        add_attention=cfg.attention,
        class_embed_type="identity",
    )


def embedding_dim(model: UNet2DModel) -> int:
    """Width of the time embedding, which a client embedding must match."""
    return int(model.time_embedding.linear_2.out_features)


def count_parameters(model: nn.Module) -> int:
    """Number of weights in ``model``."""
    return sum(p.numel() for p in model.parameters())


def head_names(model: nn.Module) -> list[str]:
    """Names of the output-head parameters (kept per client by FedPer)."""
    return methods.head_names(n for n, _ in model.named_parameters())


def state_of(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of (some of) the model's parameters and buffers."""
    state = model.state_dict()
    keep = state.keys() if names is None else names
    return {k: state[k].detach().clone() for k in keep}


def load_partial(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the matching parameters of ``model`` (others untouched)."""
    own = model.state_dict()
    unknown = set(state) - set(own)
    if unknown:
        raise KeyError(f"parameters not in the model: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def init_embeddings(num: int, dim: int, how: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``num`` new client embeddings: ``random`` N(0, scale^2) or ``zeros``."""
    if how == "zeros":
        return torch.zeros(num, dim)
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        return scale * torch.randn(num, dim, generator=g)
    raise ValueError(f"unknown embedding init {how!r}")


def backbone_sha(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a set of weights (names and exact values)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device
