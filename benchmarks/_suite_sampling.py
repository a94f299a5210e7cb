"""Suite rows on sampling: images/s per sampler, KID feature speed, KID per sampler."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from _suite_common import Row, median_time, row_vs

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig, KIDConfig
from spire_pipeline.spire.federated import derive_seed
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.kid import kid
from spire_pipeline.spire.model import build_backbone
from spire_pipeline.spire.partition import ClientSplit

#: the samplers compared for KID (the current default first)
CANDIDATES = (("ddpm", 50), ("ddpm", 25), ("ddim", 25), ("dpmsolver++", 20))


def sampler_label(sampler: str, steps: int) -> str:
    return f"{sampler}-{steps}"


def configured_samplers(envs: dict[str, dict]) -> dict[tuple[str, int], list[str]]:
    """(sampler, steps) -> the environments whose main job samples with it."""
    used: dict[tuple[str, int], list[str]] = {}
    for env, params in envs.items():
        diff = params.get("federated_pretraining", {}).get("diffusion", {})
        kid_steps = params.get("kid_evaluation", {}).get("sampler_steps")
        default = DiffusionConfig()
        sampler = diff.get("sampler", default.sampler)
        steps = kid_steps or diff.get("sampler_steps", default.sampler_steps)
        used.setdefault((sampler, int(steps)), []).append(env)
    return used


def sampling_rows(
    backbone: BackboneConfig,
    diffusion: DiffusionConfig,
    samplers: list[tuple[str, int]],
    used_by: dict[tuple[str, int], list[str]],
    batch: int,
    device: torch.device,
    precisions: list[str],
) -> tuple[list[Row], dict[tuple[str, int, str], float]]:
    """Images/s of sampling one batch, per (sampler, steps, precision); reference: fp32."""
    model = build_backbone(backbone, seed=0).to(device).eval().requires_grad_(False)
    emb = torch.randn(
        4 * backbone.block_out_channels[0], generator=torch.Generator().manual_seed(0)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    speed: dict[tuple[str, int, str], float] = {}
    rows = []
    for sampler, steps in samplers:
        dcfg = diffusion.model_copy(update={"sampler": sampler, "sampler_steps": steps})
        for precision in precisions:

            def run(dcfg=dcfg, precision=precision) -> None:
                generate_from(
                    model, emb, backbone, dcfg, batch, seed=0, batch_size=batch,
                    device=device, precision=precision,
                )  # fmt: skip
                sync()

            # warm-up: a 2-step pass (the kernels and allocator, not the whole schedule)
            warm = dcfg.model_copy(update={"sampler_steps": 2})
            generate_from(model, emb, backbone, warm, batch, 0, device=device, precision=precision)
            speed[(sampler, steps, precision)] = batch / median_time(run, 1, warmup=0)
        label = sampler_label(sampler, steps)
        envs = ", ".join(used_by.get((sampler, steps), [])) or "candidate"
        for precision in precisions:
            rows.append(
                row_vs(
                    f"sampling {label} {precision} (batch {batch}; used by: {envs})",
                    speed[(sampler, steps, precision)],
                    "images/s",
                    f"{label} fp32",
                    speed[(sampler, steps, "fp32")],
                )
            )
    return rows, speed


def feature_rows(extractor, images: np.ndarray, repeats: int) -> tuple[list[Row], float]:
    """Images/s of the KID feature extractor (float32, as the main job runs it)."""
    extractor(images[: extractor.batch_size], progress=False)
    seconds = median_time(lambda: extractor(images, progress=False), repeats, warmup=0)
    ips = len(images) / seconds
    name = (
        f"KID features {extractor.name}@{extractor.image_size}px fp32 "
        f"(batch {extractor.batch_size})"
    )
    return [Row(name, ips, "images/s")], ips


@dataclass
class SamplerKID:
    """KID of one sampler: mean over clients per seed, then mean and std over seeds."""

    label: str
    per_seed: list[float]
    subset_std: float  # mean over clients and seeds of KID's std over subsets
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))

    @property
    def seed_std(self) -> float:
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else float("nan")


def sampler_kid(
    bundle: ModelBundle,
    clients: list[ClientSplit],
    real: dict[str, np.ndarray],
    extractor,
    kcfg: KIDConfig,
    sampler: str,
    steps: int,
    seeds: int,
    num: int,
    device: torch.device,
    precision: str = "fp32",
) -> SamplerKID:
    """KID of ``bundle``'s samples for each client against its test images (features ``real``)."""
    dcfg = bundle.diffusion_cfg.model_copy(update={"sampler": sampler, "sampler_steps": steps})
    model, _ = bundle.build(None)
    model.to(device)
    per_seed, stds = [], []
    t0 = time.perf_counter()
    for s in range(seeds):
        kids = []
        for c in clients:
            emb = bundle.embeddings.get(c.client)
            images = generate_from(
                model, emb, bundle.backbone_cfg, dcfg, num,
                seed=derive_seed(kcfg.seed, "suite-kid", c.client, s),
                batch_size=kcfg.batch_size, device=device, precision=precision,
            )  # fmt: skip
            mean, std = kid(
                extractor(images, progress=False),
                real[c.client],
                num_subsets=kcfg.num_subsets,
                max_subset_size=kcfg.max_subset_size,
                seed=derive_seed(kcfg.seed, "subsets", c.client),
            )
            kids.append(mean)
            stds.append(std)
        per_seed.append(float(np.mean(kids)))
    label = f"{sampler_label(sampler, steps)} {precision}"
    return SamplerKID(label, per_seed, float(np.mean(stds)), time.perf_counter() - t0)


def within_noise(a: SamplerKID, b: SamplerKID) -> tuple[bool, float]:
    """Whether two KIDs differ by at most twice the standard error of their difference.

    The standard error comes from the spread over sample seeds (each seed's value is a mean
    over clients); with a single seed, from the spread over subsets.
    """
    if len(a.per_seed) > 1 and len(b.per_seed) > 1:
        se = np.hypot(a.seed_std / np.sqrt(len(a.per_seed)), b.seed_std / np.sqrt(len(b.per_seed)))
    else:
        se = np.hypot(a.subset_std, b.subset_std)
    return bool(abs(a.mean - b.mean) <= 2 * se), float(2 * se)


def kid_rows(results: list[SamplerKID], reference: SamplerKID, what: str) -> list[Row]:
    """One row per sampler: its KID against the reference sampler's, with the noise."""
    rows = []
    for r in results:
        ok, noise = within_noise(r, reference)
        rows.append(
            Row(
                f"KID {r.label} ({what}; std over seeds {r.seed_std:.4g}, over subsets "
                f"{r.subset_std:.4g}; {r.seconds:.0f} s)",
                r.mean,
                "KID",
                f"{reference.label} (2 x standard error of the difference: {noise:.4g})",
                reference.mean,
                r.mean / reference.mean if reference.mean else float("nan"),
                "within noise of the reference",
                ok,
            )
        )
    return rows
