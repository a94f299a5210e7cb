"""Unseen-client adaptation: SPIRE's new embedding and the parameter-efficient baselines.

Every method trains with the shared :func:`~spire_pipeline.spire.training.local_train`, on the
unseen client's train split only. What each method trains and starts from is its spec in
:data:`~spire_pipeline.spire.methods.ADAPTATION`:

===============  =========================================  ======================
method           trained tensors                            starts from
===============  =========================================  ======================
``spire``        a new client embedding (backbone frozen)   the ``spire`` backbone
``full_finetune``every backbone weight                      the ``fedavg`` model
``lora``         low-rank adapters (peft) on convs/linears  the ``fedavg`` model
``bitfit``       biases only                                the ``fedavg`` model
``head``         the output head (``conv_norm_out``,        the ``fedavg`` model
                 ``conv_out``)
``scratch``      every weight of a new random model         nothing
===============  =========================================  ======================

The result is a :class:`ModelBundle` holding only what was trained (``local[client]`` and, for
``spire``, ``embeddings[client]``), plus ``info["base"]``: the pretrained method it extends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import UNet2DModel

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, LocalTrainConfig
from spire_pipeline.spire.diffusion import heldout_losses, make_scheduler
from spire_pipeline.spire.federated import ClientData, derive_seed
from spire_pipeline.spire.methods import ADAPTATION
from spire_pipeline.spire.model import (
    backbone_sha,
    build_backbone,
    count_parameters,
    embedding_dim,
    load_partial,
    resolve_device,
    state_of,
)
from spire_pipeline.spire.training import LocalResult, ParamGroup, local_train

#: adaptation method -> the pretrained method it starts from (``None``: random initialisation)
BASE = {name: spec.base for name, spec in ADAPTATION.items()}
LORA_TARGETS = ["conv1", "conv2", "time_emb_proj"]


@dataclass
class Adapted:
    """An adaptation's trained tensors, its parameter count and what it cost."""

    bundle: ModelBundle
    trained_params: int
    total_params: int
    seconds: float
    result: LocalResult
    snapshots: dict[int, ModelBundle] = field(default_factory=dict)

    @property
    def trained_pct(self) -> float:
        return 100.0 * self.trained_params / self.total_params


def add_lora(model: UNet2DModel, rank: int, alpha: float) -> UNet2DModel:
    """Inject LoRA adapters (peft) into the UNet's convolutions and time projections."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=LORA_TARGETS,
        lora_dropout=0.0,
        init_lora_weights=True,
    )
    return inject_adapter_in_model(cfg, model)


#: how a new client's embedding can start (``client_adaptation.embedding_init``)
EMBEDDING_INITS = ("zeros", "mean_seen", "random", "retrieval")
#: train images a retrieval initialisation scores the seen embeddings on
RETRIEVAL_IMAGES = 64


def initial_embedding(
    how: str,
    spire: ModelBundle,
    dim: int,
    seed: int,
    seen: list[str] | None = None,
    score: Callable[[torch.Tensor], np.ndarray] | None = None,
) -> torch.Tensor:
    """A new client's embedding: ``zeros``, ``mean_seen`` (mean of the seen clients'),
    ``random`` (N(0, s^2) with s the seen embeddings' RMS) or ``retrieval`` (the seen embedding
    with the lowest ``score``: the new client's DDPM loss under each seen embedding)."""
    table = torch.stack([spire.embeddings[c] for c in (seen or sorted(spire.embeddings))])
    if how == "zeros":
        return torch.zeros(dim)
    if how == "mean_seen":
        return table.mean(0).clone()
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        return table.pow(2).mean().sqrt() * torch.randn(dim, generator=g)
    if how == "retrieval":
        if score is None:
            raise ValueError("a retrieval initialisation needs the new client's data to score")
        return table[int(np.argmin(score(table)))].clone()
    raise ValueError(f"unknown embedding init {how!r}")


def base_model(
    method: str, pretrained: dict[str, ModelBundle], cfg: AdaptationConfig, seed: int
) -> tuple[UNet2DModel, ModelBundle | None, int]:
    """The model an adaptation method starts from (frozen), with LoRA injected for ``lora``,
    its pretrained bundle, and the backbone's weight count (without adapters)."""
    spec = ADAPTATION[method]
    base = spec.base
    if base is None:
        any_bundle = next(iter(pretrained.values()))
        model = build_backbone(any_bundle.backbone_cfg, seed=seed)
        base_bundle = None
    else:
        if base not in pretrained:
            raise KeyError(
                f"adaptation method {method!r} needs the pretrained {base!r} model; add {base!r} "
                f"to federated_pretraining.methods"
            )
        base_bundle = pretrained[base]
        model, _ = base_bundle.build(None)
    total = count_parameters(model)
    if spec.uses_lora:
        # peft draws lora_A's init from the global RNG: seed it (without touching the global
        # state), so that an adaptation is reproducible and a sweep snapshot equals a shorter run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    model.to(resolve_device(cfg.device)).requires_grad_(False)
    return model, base_bundle, total


def trainable_names(method: str, model: UNet2DModel) -> list[str]:
    """Names of the model tensors a method trains (none for ``spire``: only its embedding)."""
    if method not in ADAPTATION:
        raise ValueError(f"unknown adaptation method {method!r}")
    return ADAPTATION[method].trainable_names(model)


def adapt(
    method: str,
    pretrained: dict[str, ModelBundle],
    client: ClientData,
    cfg: AdaptationConfig,
    local: LocalTrainConfig | None = None,
    progress: bool = False,
    snapshot_steps: Sequence[int] = (),
) -> Adapted:
    """Adapt ``method`` to ``client`` with the budget ``local`` (default ``cfg.local``).

    ``snapshot_steps``: also return the adapted parameters as they were after these steps
    (``0``: as they were before the first step).
    """
    local = local or cfg.local
    spec = ADAPTATION[method]
    seed = derive_seed(cfg.seed, "adapt", method, client.client)
    model, base_bundle, total = base_model(method, pretrained, cfg, seed)
    backbone_cfg = next(iter(pretrained.values())).backbone_cfg
    diffusion_cfg = next(iter(pretrained.values())).diffusion_cfg
    dim = embedding_dim(model)
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    names = trainable_names(method, model)
    groups = [ParamGroup({n: params[n] for n in names}, local.lr, local.weight_decay)]
    zero = torch.zeros(dim, device=device)
    scheduler = make_scheduler(diffusion_cfg)

    def denoise(x, t, c):
        return model(x, t, class_labels=zero.expand(x.shape[0], -1) if c is None else c).sample

    emb = None
    if spec.conditional:

        def score(table: torch.Tensor) -> np.ndarray:
            images = client.images[:RETRIEVAL_IMAGES]
            return heldout_losses(denoise, scheduler, images, table.to(device), seed)

        emb = initial_embedding(cfg.embedding_init, base_bundle, dim, seed, score=score)
        emb = emb.to(device)
        groups = [ParamGroup({"embedding": emb}, local.embedding_lr)]

    info = {
        "base": spec.base,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "embedding_init": cfg.embedding_init if spec.conditional else None,
    }

    def pack(params: dict[str, torch.Tensor], extra: dict) -> ModelBundle:
        trained = {k: v.detach().clone() for k, v in params.items() if k != "embedding"}
        return ModelBundle(
            method=method,
            backbone_cfg=backbone_cfg,
            diffusion_cfg=diffusion_cfg,
            embeddings=(
                {client.client: params["embedding"].detach().clone()}
                if "embedding" in params
                else {}
            ),
            local={client.client: trained} if trained else {},
            info=info | extra,
        )

    snapshots: dict[int, ModelBundle] = {}
    wanted = set(snapshot_steps)

    def on_step(step: int) -> None:
        if step in wanted:
            snapshots[step] = pack(
                {k: v for g in groups for k, v in g.params.items()}, {"steps": step}
            )

    if 0 in wanted:
        on_step(0)
    sha_before = backbone_sha(state_of(model))
    start = time.perf_counter()
    result = local_train(
        denoise,
        groups,
        client.images,
        local,
        scheduler,
        seed=seed,
        cond=emb,
        client=client.client,
        progress=progress,
        on_step=on_step,
    )
    seconds = time.perf_counter() - start
    sha_after = backbone_sha(state_of(model))
    if spec.conditional and sha_after != sha_before:
        raise RuntimeError(f"{method} adaptation of {client.client} changed the frozen backbone")
    bundle = pack(result.params, {"backbone_sha": sha_after if spec.conditional else None})
    for snap in snapshots.values():
        snap.info["backbone_sha"] = bundle.info["backbone_sha"]
    n_trained = sum(v.numel() for g in groups for v in g.params.values())
    return Adapted(bundle, n_trained, total, seconds, result, snapshots)


def build_adapted(
    adapted: ModelBundle, pretrained: dict[str, ModelBundle], client: str
) -> tuple[UNet2DModel, torch.Tensor | None]:
    """The model (and conditioning vector) an adapted bundle generates ``client`` with."""
    base = adapted.info.get("base")
    if base is None:
        model = build_backbone(adapted.backbone_cfg)
    else:
        model, _ = pretrained[base].build(None)
    if ADAPTATION[adapted.method].uses_lora:
        add_lora(model, adapted.info["lora_rank"], adapted.info["lora_alpha"])
    if client in adapted.local:
        load_partial(model, adapted.local[client])
    model.eval().requires_grad_(False)
    return model, adapted.embeddings.get(client)
