"""Per-client KID of generated samples against each client's held-out test split.

Jobs that generate with the same model and condition share one set of samples (for example an
unconditional model evaluated on every client). Sample seeds depend only on the condition, so
two models are compared on the same initial noise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from spire_pipeline.spire.adaptation import build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.cache_files import read_or_set_aside
from spire_pipeline.spire.config import KIDConfig
from spire_pipeline.spire.features import FeatureExtractor, build_feature_extractor, extractor_label
from spire_pipeline.spire.federated import derive_seed
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.job_cache import JobCache, SampleRequest, cached_samples
from spire_pipeline.spire.kid import kid
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING
from spire_pipeline.spire.model import resolve_device

log = logging.getLogger(__name__)


def kid_extractor(cfg: KIDConfig) -> FeatureExtractor:
    """The feature extractor that ``cfg`` names, on ``cfg.device``."""
    return build_feature_extractor(
        cfg.extractor,
        cfg.image_size,
        batch_size=cfg.batch_size,
        device=str(resolve_device(cfg.device)),
    )


def kid_extractor_label(cfg: KIDConfig) -> str:
    """The extractor's name and input size (part of every KID metric's name)."""
    return extractor_label(cfg.extractor, cfg.image_size)


@dataclass(frozen=True)
class EvalJob:
    """Compare ``client``'s test split with samples of ``source`` conditioned on ``condition``."""

    client: str
    role: str
    method: str
    phase: str
    source: str
    condition: str | None
    build: Callable[[], tuple] = field(compare=False, repr=False)
    bundle: ModelBundle = field(compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False)
    #: personalisation guidance of the samples (1: none; :func:`.diffusion.guided`)
    guidance: float = field(default=1.0, compare=False)

    @property
    def sample_key(self) -> tuple[str, str | None, float]:
        return (self.source, self.condition, self.guidance)


def pretrained_jobs(
    bundles: dict[str, ModelBundle],
    roles: dict[str, str],
    guidance: Mapping[str, float] | None = None,
) -> list[EvalJob]:
    """Every client x every pretrained method that has a model for it; ``guidance``: a
    pretrained method's personalisation guidance scale (default 1: none)."""
    guidance = guidance or {}
    jobs = []
    for method, b in sorted(bundles.items()):
        for client, role in sorted(roles.items()):
            personal = PRETRAINING[method].per_client
            if personal and client not in b.clients():
                continue
            cond = client if personal else None
            jobs.append(
                EvalJob(
                    client,
                    role,
                    method,
                    "pretrained",
                    f"pretrained/{method}",
                    cond,
                    build=lambda b=b, c=cond: b.build(c),
                    bundle=b,
                    guidance=guidance.get(method, 1.0) if cond is not None else 1.0,
                )
            )
    return jobs


def adapted_jobs(
    adapted: dict[str, ModelBundle],
    pretrained: dict[str, ModelBundle],
    roles: dict[str, str],
    guidance: Mapping[str, float] | None = None,
) -> list[EvalJob]:
    """Every adapted (method, evaluation client), against that client's test split;
    ``guidance``: a conditional method's personalisation guidance scale (default 1: none).

    ``adapted`` maps ``"<method>__<client>"`` to the adapted bundle. What adaptation does to the
    seen clients is measured by :mod:`~spire_pipeline.spire.forgetting`.
    """
    guidance = guidance or {}
    jobs = []
    for key, b in sorted(adapted.items()):
        method, client = key.split("__")
        cond = client if ADAPTATION[method].conditional else None
        jobs.append(
            EvalJob(
                client,
                roles.get(client, "unseen"),
                method,
                "adapted",
                f"adapted/{method}/{client}",
                cond,
                build=lambda b=b, c=client: build_adapted(b, pretrained, c),
                bundle=b,
                guidance=guidance.get(method, 1.0) if cond is not None else 1.0,
            )
        )
    return jobs


def features_key(images: Sequence[np.ndarray], extractor: str, image_size: int) -> str:
    """Identifies a set of real images and the extractor that sees them."""
    h = hashlib.sha256(f"{extractor}@{image_size}".encode())
    for im in images:
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()[:16]


def _read_features(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {c: npz[c] for c in npz.files}


def cached_features(
    images: dict[str, np.ndarray],
    extractor: Callable[[np.ndarray], np.ndarray],
    name: str,
    image_size: int,
    cache_dir: Path | None,
) -> dict[str, np.ndarray]:
    """Features per client, read from ``cache_dir`` while images and extractor are unchanged."""
    key = features_key([images[c] for c in sorted(images)], name, image_size)
    path = None if cache_dir is None else Path(cache_dir) / f"{name}-{image_size}-{key}.npz"
    if path is not None and path.exists():
        feats = read_or_set_aside(path, _read_features, "real-image features")
        if feats is not None and set(feats) == set(images):
            log.info("Real-image features reused from %s", path)
            return feats
    feats = {c: extractor(images[c]) for c in tqdm(sorted(images), desc="real features")}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **feats)
        tmp.replace(path)
    return feats


def evaluate(
    jobs: Sequence[EvalJob],
    real_features: dict[str, np.ndarray],
    extractor: Callable[[np.ndarray], np.ndarray],
    extractor_name: str,
    cfg: KIDConfig,
    progress: bool = True,
    *,
    cache: JobCache | None = None,
    samples: dict[tuple[str, str, str], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, str, str], np.ndarray]]:
    """KID per job; returns the long table and a few samples per (client, method, phase).

    ``cache``: each job's samples and features are kept there (:mod:`.job_cache`), so that a
    rerun draws only the samples it does not find. ``samples``, when given, receives every
    generated image per (client, method, phase) (jobs that share a sample set share the array),
    e.g. to label them without sampling again."""
    generated: dict[tuple, np.ndarray] = {}
    mark = cache.mark() if cache is not None else (0, 0)
    fake_features: dict[tuple, np.ndarray] = {}
    firsts: dict[tuple, np.ndarray] = {}
    grids: dict[tuple[str, str, str], np.ndarray] = {}
    rows = []
    device = resolve_device(cfg.device)
    for job in tqdm(jobs, desc="KID", disable=not progress):
        key = job.sample_key
        if key not in fake_features:
            model, emb = job.build()
            request = SampleRequest(
                cfg.num_generated,
                derive_seed(cfg.seed, "kid", job.condition or "-"),
                cfg.sampler_steps,
                cfg.batch_size,
                device,
                cfg.precision,
                job.guidance,
            )
            fake_features[key], images = cached_samples(
                cache,
                model,
                emb,
                job.bundle,
                request,
                extractor_name,
                lambda m=model, e=emb, b=job.bundle, q=request: draw(m, e, b, q, extractor),
            )
            firsts[key] = images[: cfg.grid_samples]
            if samples is not None:
                generated[key] = images
        grids[(job.client, job.method, job.phase)] = firsts[key]
        if samples is not None:
            samples[(job.client, job.method, job.phase)] = generated[key]
        real = real_features[job.client]
        mean, std = kid(
            fake_features[key],
            real,
            num_subsets=cfg.num_subsets,
            max_subset_size=cfg.max_subset_size,
            seed=derive_seed(cfg.seed, "subsets", job.client),
        )
        rows.append(
            {
                "client": job.client,
                "role": job.role,
                "method": job.method,
                "phase": job.phase,
                "kid_mean": mean,
                "kid_std": std,
                "n_generated": len(fake_features[key]),
                "n_real": len(real),
                "extractor": extractor_name,
                **job.extra,
            }
        )
    reused = f" ({cache.summary(mark)})" if cache is not None else ""
    log.info("KID: %d rows from %d sample sets%s", len(rows), len(fake_features), reused)
    return pd.DataFrame(rows), grids


def draw(
    model, cond, bundle: ModelBundle, request: SampleRequest, extractor
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of ``model`` conditioned on ``cond`` as ``request`` says, and their features."""
    images = generate_from(
        model,
        cond,
        bundle.backbone_cfg,
        bundle.diffusion_cfg,
        request.num,
        seed=request.seed,
        steps=request.steps,
        batch_size=request.batch_size,
        device=request.device,
        precision=request.precision,
        guidance=request.guidance,
    )
    return np.asarray(extractor(images)), images


def kid_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median, mean and worst KID per (phase, role, method)."""
    g = table.groupby(["phase", "role", "method"])["kid_mean"]
    out = pd.DataFrame(
        {
            "clients": g.size(),
            "kid_median": g.median(),
            "kid_mean": g.mean(),
            "kid_worst": g.max(),
        }
    ).reset_index()
    out["extractor"] = table["extractor"].iloc[0] if len(table) else ""
    return out


def real_reference(
    real_features: dict[str, np.ndarray],
    roles: dict[str, str],
    cfg: KIDConfig,
    extractor_name: str,
) -> pd.DataFrame:
    """KID between two random halves of each client's real test features.

    KID is unbiased, so two samples of one distribution give 0 in expectation; what this
    measures is how far from 0 KID lands at this sample size (its noise floor). The subsets are
    as large as those of the model KIDs (``cfg.max_subset_size``, capped by the half size).
    """
    rows = []
    for client in sorted(real_features):
        feats = np.asarray(real_features[client])
        half = len(feats) // 2
        if half < 2:
            log.warning("KID reference: %s has %d test images, too few to halve", client, half)
            continue
        order = np.random.default_rng(derive_seed(cfg.seed, "reference", client)).permutation(
            len(feats)
        )
        a, b = feats[order[:half]], feats[order[half : 2 * half]]
        mean, std = kid(
            a,
            b,
            num_subsets=cfg.num_subsets,
            max_subset_size=cfg.max_subset_size,
            seed=derive_seed(cfg.seed, "reference-subsets", client),
        )
        rows.append(
            {
                "client": client,
                "role": roles.get(client, ""),
                "kid_mean": mean,
                "kid_std": std,
                "n_half": half,
                "subset_size": min(cfg.max_subset_size, half),
                "extractor": extractor_name,
            }
        )
    columns = ["client", "role", "kid_mean", "kid_std", "n_half", "subset_size", "extractor"]
    return pd.DataFrame(rows, columns=columns)
