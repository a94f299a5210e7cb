"""The one local-training function that every method and every engine uses."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from spire_pipeline.spire.config import LocalTrainConfig
from spire_pipeline.spire.diffusion import Denoiser, ddpm_loss
from spire_pipeline.spire.precision import in_precision


class ClientTrainingError(RuntimeError):
    """Local training failed (e.g. the loss became NaN); the message names the client.

    ``step``: the local step that failed, when known (the steps before it completed).
    """

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class ParamGroup:
    """Named trainable tensors sharing one learning rate."""

    params: dict[str, torch.Tensor]
    lr: float
    weight_decay: float = 0.0


@dataclass
class LocalResult:
    """What local training returns: the trained tensors, the sample count, the loss history."""

    params: dict[str, torch.Tensor]
    num_samples: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean loss over the last quarter of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 4) :]
        return float(np.mean(tail)) if tail else float("nan")


def num_steps(cfg: LocalTrainConfig, num_samples: int) -> int:
    """The step budget: ``steps`` or ``epochs`` passes over the data."""
    if cfg.steps is not None:
        return cfg.steps
    return int(cfg.epochs) * math.ceil(num_samples / cfg.batch_size)


def _fusable(tensors: list[torch.Tensor]) -> bool:
    """Whether torch's fused (one-kernel) optimizer step applies to these tensors."""
    return all(t.dtype == torch.float32 and t.device.type in ("cpu", "cuda") for t in tensors)


def _optimizer(cfg: LocalTrainConfig, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    """The configured optimizer; its fused implementation where it applies (same update rule,
    one kernel for all tensors instead of a Python loop over them)."""
    torch_groups = [
        {"params": list(g.params.values()), "lr": g.lr, "weight_decay": g.weight_decay}
        for g in groups
        if g.params
    ]
    fused = _fusable([t for g in torch_groups for t in g["params"]])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(torch_groups, momentum=0.9, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, fused=fused)
    return torch.optim.Adam(torch_groups, fused=fused)


def with_embedding_dropout(
    cond: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], p: float, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``cond`` (one vector or a function of the batch's indices) with each image's row replaced
    by the null (zero) embedding with probability ``p``, drawn from a generator of its own
    (seeded from ``seed``), so the batches and the noise stay those of ``p = 0``."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7_919) % 2**63)

    def dropped(idx: torch.Tensor) -> torch.Tensor:
        c = cond(idx) if callable(cond) else cond
        if c.ndim == 1:
            c = c.expand(len(idx), -1)
        keep = (torch.rand(len(idx), generator=g) >= p).to(device=c.device, dtype=c.dtype)
        return c * keep[:, None]

    return dropped


def local_train(
    denoise: Denoiser,
    groups: list[ParamGroup],
    images: torch.Tensor,
    cfg: LocalTrainConfig,
    scheduler: DDPMScheduler,
    seed: int,
    cond: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    client: str = "?",
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> LocalResult:
    """Train the tensors in ``groups`` (all others stay fixed) with the DDPM loss.

    ``images`` is (N,C,H,W) in [-1, 1]. ``cond`` is ``None`` (unconditional), one conditioning
    vector for every image, or a function of the batch's image indices (pooled data). Batches
    are drawn without replacement within an epoch, from a generator seeded with ``seed``.
    Raises ``ClientTrainingError`` when the loss is not finite, naming ``client`` and the step.
    ``on_step(k)`` is called after the k-th step (1-based), e.g. to snapshot the tensors.
    The network computes in ``cfg.precision`` (:mod:`.precision`); the trained tensors, the
    optimizer and the loss stay float32. With ``cfg.embedding_dropout`` > 0 a conditional
    method trains on the null embedding for that share of its images
    (:func:`with_embedding_dropout`; what personalisation guidance samples with).
    """
    trainable = [t for g in groups for t in g.params.values()]
    if not trainable:
        raise ValueError(f"client {client}: nothing to train")
    for t in trainable:
        t.requires_grad_(True)
    opt = _optimizer(cfg, groups)
    g = torch.Generator().manual_seed(int(seed))
    n = images.shape[0]
    device = trainable[0].device
    steps = num_steps(cfg, n)
    net = in_precision(denoise, cfg.precision, device)
    if cond is not None and cfg.embedding_dropout > 0:
        cond = with_embedding_dropout(cond, cfg.embedding_dropout, seed)
    losses: list[float] = []
    order = torch.randperm(n, generator=g)
    pos = 0
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"train {client}", disable=not progress, leave=False):
        if pos + cfg.batch_size > n and pos > 0:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        batch_cond = cond(idx) if callable(cond) else cond
        if batch_cond is not None and batch_cond.ndim == 1:
            batch_cond = batch_cond.expand(len(idx), -1)
        loss = ddpm_loss(net, scheduler, images[idx].to(device), batch_cond, g)
        if not torch.isfinite(loss):
            raise ClientTrainingError(
                f"client {client}: loss is {loss.item()} at local step {step}; "
                "lower the learning rate or check this client's data",
                step=step,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1)
    for t in trainable:
        t.requires_grad_(False)
    params = {k: v.detach().clone() for gr in groups for k, v in gr.params.items()}
    return LocalResult(params, n, losses, time.perf_counter() - start)
