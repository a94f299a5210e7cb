"""The pretrained SPIRE model in diffusers' own format, loadable without this project.

Layout of an export folder::

    unet/                        UNet2DModel.save_pretrained (config.json + safetensors)
    scheduler/                   the training noise schedule, DDPMScheduler.save_pretrained
    sampler/                     the sampler (DDPM, DDIM or DPM-Solver++), save_pretrained
    client_embeddings.safetensors   one tensor per client, keyed by its name
    spire_export.json            sampler class and steps, clients and their kind, fingerprint

A client's embedding enters as ``class_labels`` (``class_embed_type="identity"``): see the
README section "Personalise to your own images" for the sampling loop with diffusers alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.diffusion import make_sampler, make_scheduler
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.personalize import model_sha

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "client_embeddings.safetensors"
INFO_FILE = "spire_export.json"


@dataclass
class DiffusersExport:
    """A backbone, its schedules and the client embeddings, as diffusers objects."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    sampler: diffusers.SchedulerMixin
    embeddings: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)


def to_diffusers(
    bundle: ModelBundle, personal: dict[str, ModelBundle] | None = None
) -> DiffusersExport:
    """The export of a pretrained conditional ``bundle``, with the seen clients' embeddings and
    those of ``personal`` trained on this very backbone (others are skipped, with a warning)."""
    spec = PRETRAINING.get(bundle.method)
    if spec is None or not spec.conditional or bundle.heads or bundle.local:
        raise ValueError(
            f"export writes one client-conditioned backbone; the {bundle.method!r} model is not one"
        )
    unet, _ = bundle.build(None)
    sha = model_sha(bundle)
    embeddings = {c: e.detach().clone() for c, e in sorted(bundle.embeddings.items())}
    kinds = dict.fromkeys(embeddings, "seen")
    for client, b in sorted((personal or {}).items()):
        if b.info.get("base") != bundle.method:
            continue
        if b.info.get("backbone_sha") != sha:
            log.warning(
                "export: skipping %s, whose embedding was trained on another backbone (%s, not %s)",
                client,
                b.info.get("backbone_sha"),
                sha,
            )
            continue
        embeddings[client] = b.embeddings[client].detach().clone()
        kinds[client] = "personal"
    scheduler = make_scheduler(bundle.diffusion_cfg)
    sampler = make_sampler(scheduler, bundle.diffusion_cfg)
    info = {
        "method": bundle.method,
        "backbone_sha": sha,
        "sampler_class": type(sampler).__name__,
        "sampler_steps": bundle.diffusion_cfg.sampler_steps,
        "image_size": bundle.backbone_cfg.image_size,
        "channels": bundle.backbone_cfg.channels,
        "embedding_dim": int(next(iter(embeddings.values())).numel()) if embeddings else None,
        "clients": kinds,
    }
    return DiffusersExport(unet, scheduler, sampler, embeddings, info)


def save_export(export: DiffusersExport, folder: str | Path) -> None:
    """Write ``export`` into ``folder`` (see the module docstring for the layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export.unet.save_pretrained(folder / "unet")
    export.scheduler.save_pretrained(folder / "scheduler")
    export.sampler.save_pretrained(folder / "sampler")
    tensors = {c: e.detach().float().contiguous().cpu() for c, e in export.embeddings.items()}
    save_file(
        tensors,
        str(folder / EMBEDDINGS_FILE),
        metadata={"clients": json.dumps(export.info["clients"])},
    )
    (folder / INFO_FILE).write_text(json.dumps(export.info, indent=2) + "\n")


def load_export(folder: str | Path) -> DiffusersExport:
    """Read an export folder back (diffusers and safetensors only)."""
    folder = Path(folder)
    info = json.loads((folder / INFO_FILE).read_text())
    sampler_class = getattr(diffusers, info["sampler_class"])
    sampler = sampler_class.from_pretrained(folder, subfolder="sampler")
    sampler.set_timesteps(info["sampler_steps"])
    return DiffusersExport(
        unet=UNet2DModel.from_pretrained(folder / "unet").eval(),
        scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        sampler=sampler,
        embeddings=load_file(str(folder / EMBEDDINGS_FILE)),
        info=info,
    )
