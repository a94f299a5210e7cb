"""Suite rows on training: ``local_train`` against a plain loop, FLOP/s, precision and quality."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from _suite_common import Row, interleaved_medians, row_vs
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from spire_pipeline.spire.config import BackboneConfig, LocalTrainConfig, PretrainingConfig
from spire_pipeline.spire.diffusion import make_scheduler
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.model import build_backbone
from spire_pipeline.spire.training import ParamGroup, local_train


def _model(cfg: BackboneConfig, device: torch.device):
    return build_backbone(cfg, seed=0).to(device).requires_grad_(False)


def plain_loop(model, emb, images, batch: int, steps: int, lr: float, emb_lr: float, clip, seed):
    """What one would write by hand with PyTorch and diffusers: the reference loop."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    model.requires_grad_(True)
    emb.requires_grad_(True)
    opt = torch.optim.Adam(
        [{"params": list(model.parameters()), "lr": lr}, {"params": [emb], "lr": emb_lr}]
    )
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(x0.device)
        pred = model(scheduler.add_noise(x0, noise, t), t, class_labels=emb.expand(batch, -1))
        loss = F.mse_loss(pred.sample, noise)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [emb], clip)
        opt.step()
    model.requires_grad_(False)
    emb.requires_grad_(False)


@dataclass
class TrainingSpeed:
    rows: list[Row]
    seconds_per_step: dict[str, float]  # precision -> s/step of local_train
    flops_per_step: float


def training_rows(
    pcfg: PretrainingConfig,
    images: torch.Tensor,
    device: torch.device,
    steps: int,
    repeats: int,
    matmul: dict[str, float],
) -> TrainingSpeed:
    """Images/s of ``local_train`` (fp32, bf16) and of the plain loop; FLOP/s of a step."""
    images = images.to(device)
    local = pcfg.local
    batch = local.batch_size
    dim = 4 * pcfg.backbone.block_out_channels[0]
    scheduler = make_scheduler(pcfg.diffusion)
    models = {k: _model(pcfg.backbone, device) for k in ("plain", "fp32", "bf16")}
    embs = {k: torch.zeros(dim, device=device) for k in models}

    def core(precision: str):
        cfg = local.model_copy(update={"steps": steps, "epochs": None, "precision": precision})
        model, emb = models[precision], embs[precision]

        def denoise(x, t, c):
            return model(x, t, class_labels=c).sample

        def run() -> None:
            groups = [
                ParamGroup(dict(model.named_parameters()), local.lr),
                ParamGroup({"embedding": emb}, local.embedding_lr),
            ]
            local_train(denoise, groups, images, cfg, scheduler, seed=0, cond=emb)

        return run

    def plain() -> None:
        plain_loop(
            models["plain"],
            embs["plain"],
            images,
            batch,
            steps,
            local.lr,
            local.embedding_lr,
            local.grad_clip,
            seed=0,
        )

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def synced(fn):
        def run() -> None:
            fn()
            sync()

        return run

    med = interleaved_medians(
        {"plain": synced(plain), "fp32": synced(core("fp32")), "bf16": synced(core("bf16"))},
        repeats,
    )
    ips = {k: steps * batch / v for k, v in med.items()}
    what = f"batch {batch}, backbone {pcfg.backbone.block_out_channels}"
    rows = [
        row_vs(
            f"local_train throughput fp32 ({what})",
            ips["fp32"],
            "images/s",
            "plain PyTorch + diffusers loop, fp32",
            ips["plain"],
            ">= 1.0",
            lambda r: r >= 1.0,
        ),
        row_vs(
            f"local_train throughput bf16 ({what})",
            ips["bf16"],
            "images/s",
            "plain PyTorch + diffusers loop, fp32",
            ips["plain"],
            ">= 1.0",
            lambda r: r >= 1.0,
        ),
    ]
    threads = torch.get_num_threads()
    if device.type == "cpu" and threads > 1:  # thread setting: one thread against all
        torch.set_num_threads(1)
        try:
            one = interleaved_medians({"fp32": core("fp32")}, repeats)["fp32"]
        finally:
            torch.set_num_threads(threads)
        rows.append(
            row_vs(
                f"local_train throughput fp32, 1 thread ({what})",
                steps * batch / one,
                "images/s",
                f"{threads} threads",
                ips["fp32"],
            )
        )
    flops = step_flops(models["plain"], embs["plain"], images[:batch], scheduler)
    for precision in ("fp32", "bf16"):
        achieved = flops / (med[precision] / steps) / 1e9
        rows.append(
            row_vs(
                f"training step GFLOP/s {precision} ({flops / 1e9:.2f} GFLOP per step)",
                achieved,
                "GFLOP/s",
                f"{precision} matrix product on this machine (same run)",
                matmul[precision],
                ">= 0.5",
                lambda r: r >= 0.5,
            )
        )
    per_step = {k: v / steps for k, v in med.items()}
    return TrainingSpeed(rows, per_step, flops)


def step_flops(model, emb, x0: torch.Tensor, scheduler) -> float:
    """FLOPs of one training step (forward and backward), counted by ``torch.utils``."""
    model.requires_grad_(True)
    emb = emb.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=g).to(x0.device)
    counter = FlopCounterMode(display=False)
    with counter:
        pred = model(scheduler.add_noise(x0, noise, t), t, class_labels=emb.expand(len(x0), -1))
        F.mse_loss(pred.sample, noise).backward()
    model.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- precision


@dataclass
class PretrainRun:
    precision: str
    bundle: object
    history: list[dict]
    seconds: float

    @property
    def round_losses(self) -> np.ndarray:
        return np.array([h["loss_mean"] for h in self.history])

    def final_loss(self) -> tuple[float, float]:
        """Mean loss over the last quarter of the rounds, and its standard error."""
        tail = self.round_losses[-max(2, len(self.history) // 4) :]
        return float(tail.mean()), float(tail.std(ddof=1) / np.sqrt(len(tail)))

    @property
    def seconds_per_round(self) -> float:
        # the first round pays one-time costs (allocator, kernels); leave it out
        times = [h["seconds"] for h in self.history[1:]] or [self.seconds]
        return float(np.median(times))


def pretrain_runs(
    pcfg: PretrainingConfig, clients: list[ClientData], rounds: int, precisions: list[str]
) -> dict[str, PretrainRun]:
    """Pretrain ``spire`` for ``rounds`` rounds in each precision, same seed and data."""
    runs = {}
    for precision in precisions:
        local: LocalTrainConfig = pcfg.local.model_copy(update={"precision": precision})
        cfg = pcfg.model_copy(
            update={"rounds": rounds, "methods": ["spire"], "resume": False, "local": local}
        )
        t0 = time.perf_counter()
        bundle, history = pretrain("spire", cfg, clients, progress=True)
        runs[precision] = PretrainRun(precision, bundle, history, time.perf_counter() - t0)
    return runs


def loss_rows(runs: dict[str, PretrainRun]) -> list[Row]:
    """bf16's final pretraining loss against fp32's (same seed, data and batches)."""
    fp32, bf16 = runs["fp32"], runs["bf16"]
    (l32, se32), (l16, se16) = fp32.final_loss(), bf16.final_loss()
    noise = 2 * float(np.hypot(se32, se16))
    rounds = len(fp32.history)
    return [
        Row(
            f"precision bf16: final pretraining loss ({rounds} rounds of spire, same seed)",
            l16,
            "DDPM loss",
            f"fp32 (2 x standard error of the difference: {noise:.4f})",
            l32,
            l16 / l32,
            "within 2 standard errors of fp32",
            abs(l16 - l32) <= noise,
        ),
        row_vs(
            f"precision bf16: pretraining seconds per round ({rounds} rounds)",
            bf16.seconds_per_round,
            "s/round",
            "fp32",
            fp32.seconds_per_round,
        ),
    ]
