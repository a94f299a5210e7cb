"""Personalise the pretrained SPIRE backbone to a user's own images: train one new embedding.

This is the unseen-client adaptation of :func:`~spire_pipeline.spire.adaptation.adapt` (the
method :data:`~spire_pipeline.spire.methods.PROPOSED`, backbone frozen) applied to images the
user brings, with the method's chosen settings: the newest tuning choice
(``adaptation_choices``) when there is one, else the ``client_adaptation`` parameters. A seeded
share of the images is held out, and the DDPM loss on it is measured after every few steps
with the same noise and timesteps each time, so the points of the curve are comparable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, PersonalizeConfig
from spire_pipeline.spire.diffusion import ddpm_loss, make_scheduler, to_model_space
from spire_pipeline.spire.federated import ClientData, derive_seed
from spire_pipeline.spire.methods import ADAPTATION, PROPOSED
from spire_pipeline.spire.model import backbone_sha, resolve_device, state_of
from spire_pipeline.spire.training import num_steps

log = logging.getLogger(__name__)

#: the pretrained method whose backbone a personal embedding conditions
BASE_METHOD: str = ADAPTATION[PROPOSED].base  # type: ignore[assignment]


@dataclass(frozen=True)
class Settings:
    """What personalisation trains with, and where each value came from."""

    adaptation: AdaptationConfig
    source: str


def chosen_settings(
    adaptation: AdaptationConfig, choices: pd.DataFrame | None, cfg: PersonalizeConfig
) -> Settings:
    """The method's settings: its row of ``choices`` (columns ``method, lr, steps,
    embedding_init``; ``lr`` is the embedding's learning rate) when present, else
    ``adaptation``; then the values ``cfg`` sets explicitly."""
    local = adaptation.local.model_copy()
    init = adaptation.embedding_init
    source = "client_adaptation parameters"
    row = None
    if choices is not None and "method" in choices:
        rows = choices[choices["method"].astype(str) == PROPOSED]
        row = rows.iloc[-1] if len(rows) else None
    if row is not None:
        source = "adaptation_choices"
        if _given(row.get("lr")):
            local.embedding_lr = float(row["lr"])
        if _given(row.get("steps")):
            local.steps, local.epochs = int(row["steps"]), None
        elif _given(row.get("epochs")):
            local.steps, local.epochs = None, int(row["epochs"])
        if _given(row.get("embedding_init")):
            init = str(row["embedding_init"])
    overrides = [k for k in ("steps", "lr", "embedding_init") if getattr(cfg, k) is not None]
    if cfg.steps is not None:
        local.steps, local.epochs = cfg.steps, None
    if cfg.lr is not None:
        local.embedding_lr = cfg.lr
    if cfg.embedding_init is not None:
        init = cfg.embedding_init
    if overrides:
        source += f", {', '.join(overrides)} from personalize"
    merged = adaptation.model_copy(
        update={"local": local, "embedding_init": init, "seed": cfg.seed, "device": cfg.device}
    )
    return Settings(AdaptationConfig.model_validate(merged.model_dump()), source)


def _given(value) -> bool:
    return value is not None and not pd.isna(value)


def split_indices(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` images: (train, held-out) indices, at least one of each."""
    if n < 2:
        raise ValueError(f"need at least 2 images to hold some out, got {n}")
    n_val = min(n - 1, max(1, round(share * n)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class Personalized:
    """A personal embedding (as a bundle), its validation curve and what it cost."""

    bundle: ModelBundle
    validation: pd.DataFrame  # step, val_loss
    train_losses: list[float]
    seconds: float
    num_train: int
    num_val: int
    trained_params: int
    settings: Settings
    initial: torch.Tensor = field(repr=False)

    @property
    def embedding(self) -> torch.Tensor:
        return next(iter(self.bundle.embeddings.values()))


def validation_steps(total: int, every: int | None) -> list[int]:
    """The steps after which the held-out loss is measured (0 = before training)."""
    every = every or max(1, total // 20)
    return sorted({0, total, *range(every, total + 1, every)})


@torch.no_grad()
def validation_loss(
    spire: ModelBundle,
    embeddings: dict[int, torch.Tensor],
    images: torch.Tensor,
    seed: int,
    repeats: int,
    device: torch.device,
) -> pd.DataFrame:
    """The DDPM loss of each embedding on ``images`` (model space), each with the same noise
    and timesteps: ``repeats`` draws from a generator seeded with ``seed`` afresh."""
    model, _ = spire.build(None)
    model.to(device)
    scheduler = make_scheduler(spire.diffusion_cfg)
    x = images.to(device)
    rows = []
    for step, emb in sorted(embeddings.items()):
        cond = emb.to(device).reshape(1, -1).expand(len(x), -1)
        g = torch.Generator().manual_seed(seed)

        def denoise(x_t, t, c):
            return model(x_t, t, class_labels=c).sample

        losses = [float(ddpm_loss(denoise, scheduler, x, cond, g)) for _ in range(repeats)]
        rows.append({"step": step, "val_loss": float(np.mean(losses))})
    return pd.DataFrame(rows)


def personalize(
    spire: ModelBundle,
    images: np.ndarray,
    name: str,
    settings: Settings,
    validation_share: float = 0.2,
    validation_every: int | None = None,
    validation_repeats: int = 4,
    progress: bool = False,
) -> Personalized:
    """Train a new embedding for ``name`` on ``images`` (uint8, the backbone's format) with
    the backbone of ``spire`` frozen; hold out ``validation_share`` of the images."""
    if name in spire.clients():
        raise ValueError(
            f"{name!r} is already a client of the pretrained {spire.method} model; "
            "choose another name"
        )
    cfg = settings.adaptation
    sha_before = backbone_sha(spire.backbone)
    train_idx, val_idx = split_indices(len(images), validation_share, cfg.seed)
    x = to_model_space(images)
    total = num_steps(cfg.local, len(train_idx))
    steps = validation_steps(total, validation_every)
    adapted = adapt(
        PROPOSED,
        {BASE_METHOD: spire},
        ClientData(name, x[train_idx]),
        cfg,
        progress=progress,
        snapshot_steps=steps,
    )
    if backbone_sha(spire.backbone) != sha_before:
        raise RuntimeError(f"personalising {name} changed the pretrained backbone")
    curve = validation_loss(
        spire,
        {s: b.embeddings[name] for s, b in adapted.snapshots.items()},
        x[val_idx],
        derive_seed(cfg.seed, "validation", name),
        validation_repeats,
        resolve_device(cfg.device),
    )
    bundle = adapted.bundle
    bundle.info |= {
        "steps": total,
        "embedding_lr": cfg.local.embedding_lr,
        "settings": settings.source,
        "num_train": len(train_idx),
        "num_val": len(val_idx),
        "val_loss": float(curve["val_loss"].iloc[-1]),
    }
    return Personalized(
        bundle=bundle,
        validation=curve,
        train_losses=adapted.result.losses,
        seconds=adapted.seconds,
        num_train=len(train_idx),
        num_val=len(val_idx),
        trained_params=adapted.trained_params,
        settings=settings,
        initial=adapted.snapshots[0].embeddings[name],
    )


def model_sha(bundle: ModelBundle) -> str:
    """The fingerprint :func:`adapt` records for the backbone an embedding was trained on."""
    model, _ = bundle.build(None)
    return backbone_sha(state_of(model))
