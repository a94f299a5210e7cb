"""DDPM training loss and the conditioned sampler (diffusers schedulers, minDiffusion-sized)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from spire_pipeline.spire.config import DiffusionConfig
from spire_pipeline.spire.precision import in_precision

#: eps_theta(x_t, t, cond) -> predicted noise; ``cond`` is whatever the method conditions on
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The forward (noising) process and training schedule."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W[,C]) -> float (N,C,H,W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.permute(0, 3, 1, 2)
    return x.float().div(127.5).sub(1.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N,C,H,W) in [-1, 1] -> uint8 (N,H,W) for one channel, (N,H,W,C) otherwise."""
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def ddpm_loss(
    denoise: Denoiser,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Epsilon-prediction loss ``|| eps - eps_theta(x_t, t, cond) ||^2`` at uniform random t."""
    # drawn on the CPU generator, so the numbers do not depend on the device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = t.to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    return torch.nn.functional.mse_loss(denoise(x_t, t, cond), noise)


@torch.inference_mode()
def heldout_losses(
    denoise: Denoiser,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    conds: torch.Tensor,
    seed: int,
    batch_size: int = 64,
) -> np.ndarray:
    """The DDPM loss of ``x0`` (N,C,H,W) under each of ``conds`` (K, D): a (K,) array.

    Every condition sees the same seeded timesteps and noise (one draw per image), so the
    losses compare conditions, or models, paired: the loss used to pick an embedding and to
    judge pretraining on validation images. Nothing is trained.
    """
    g = torch.Generator().manual_seed(int(seed))
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = scheduler.add_noise(x0.cpu(), noise, t)
    device = conds.device
    totals = np.zeros(len(conds))
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        xb, tb, nb = x_t[sl].to(device), t[sl].to(device), noise[sl].to(device)
        for k, cond in enumerate(conds):
            eps = denoise(xb, tb, cond.reshape(1, -1).expand(len(xb), -1))
            totals[k] += float(((eps - nb) ** 2).mean(dim=(1, 2, 3)).sum())
    return totals / n


def make_sampler(train_scheduler: DDPMScheduler, cfg: DiffusionConfig, steps: int | None = None):
    """A sampler matching the training schedule: ancestral DDPM, DDIM or DPM-Solver++."""
    if cfg.sampler == "ddpm":  # stochastic; skips steps evenly when steps < train timesteps
        s = DDPMScheduler.from_config(train_scheduler.config)
    elif cfg.sampler == "ddim":
        s = DDIMScheduler.from_config(train_scheduler.config, clip_sample=True)
    else:
        s = DPMSolverMultistepScheduler.from_config(
            train_scheduler.config, algorithm_type="dpmsolver++"
        )
    s.set_timesteps(steps or cfg.sampler_steps)
    return s


def guided(
    denoise: Denoiser, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None, w: float
) -> torch.Tensor:
    """The noise prediction with guidance ``w`` towards ``c`` and away from the null embedding
    (one forward pass when w is 1 or 0, or there is no condition)."""
    if c is None or w == 1.0:
        return denoise(x, t, c)
    null = torch.zeros_like(c)
    if w == 0.0:
        return denoise(x, t, null)
    eps_null = denoise(x, t, null)
    return eps_null + w * (denoise(x, t, c) - eps_null)


@torch.inference_mode()
def sample(
    denoise: Denoiser,
    sampler,
    num: int,
    shape: tuple[int, int, int],
    cond: torch.Tensor | None,
    seed: int,
    batch_size: int = 100,
    progress: bool = False,
    desc: str = "sampling",
    device: torch.device | str = "cpu",
    guidance: float = 1.0,
    precision: str = "fp32",
) -> np.ndarray:
    """Draw ``num`` images conditioned on ``cond``: one vector, broadcast over the batch, or one
    row per image (``(num, D)``: a population of clients in one run).

    The starting noise and a stochastic sampler's noise come from one generator seeded with
    ``seed``, so the same seed gives the same images. ``guidance`` w (personalisation guidance,
    for a model pretrained with embedding dropout): ``eps = eps_null + w (eps_cond - eps_null)``
    with the null (zero) embedding; w = 1 is plain conditional sampling, w = 0 the null model.
    The network computes in ``precision`` (:mod:`.precision`); the sampler's update stays
    float32.
    """
    denoise = in_precision(denoise, precision, device)
    out = []
    g = torch.Generator().manual_seed(seed)
    starts = range(0, num, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        n = min(batch_size, num - start)
        sampler.set_timesteps(len(sampler.timesteps))  # multistep solvers keep state: reset
        x = torch.randn((n, *shape), generator=g).to(device)
        if cond is None:
            c = None
        elif cond.ndim == 2 and cond.shape[0] == num:
            c = cond[start : start + n].to(device)
        else:
            c = cond.to(device).reshape(1, -1).expand(n, -1)
        for t in sampler.timesteps:
            eps = guided(denoise, x, t.to(device).expand(n), c, guidance)
            # t stays where the sampler's own timesteps are (the CPU): DDPM looks it up there
            x = sampler.step(eps, t, x, generator=g).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out)
