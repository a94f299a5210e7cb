"""Catastrophic forgetting: what adapting to a new client does to the population already served.

A method is adapted to a new client and then serves the seen clients: the population's samples
(an unconditional model's samples; a conditional model's samples for every seen client with its
own embedding, pooled) are compared by KID with the pooled seen clients' test images, before and
after adaptation. The "before" model is sampled ``draws`` times with independent seeds: the
spread of those KIDs is the noise of the measure. Each adaptation's "after" population is
sampled afresh (SPIRE's seen clients too, with the backbone as it is after adaptation: nothing is
reused), with seeds shared across methods, so that methods are compared on the same noise.

The change of a method = median over adapted clients of (KID after - mean KID before), with a
bootstrap CI over adapted clients; it is *beyond noise* when the CI lies above the noise band
``2 sd sqrt(1 + 1/draws)`` (the 2-sigma range of one after-draw minus the mean of the before
draws when nothing changed), and *within noise* when the CI lies inside +-band.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spire_pipeline.spire.adaptation import build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import KIDConfig
from spire_pipeline.spire.federated import derive_seed
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.job_cache import JobCache, SampleRequest, cached_samples
from spire_pipeline.spire.kid import kid
from spire_pipeline.spire.methods import ADAPTATION
from spire_pipeline.spire.model import backbone_sha, resolve_device
from spire_pipeline.spire.stats import bootstrap

log = logging.getLogger(__name__)

Builder = Callable[[], tuple[torch.nn.Module, torch.Tensor | None]]


def _population(bundle: ModelBundle, conditional: bool, seen: Sequence[str], num: int) -> Builder:
    """The model serving the seen clients and its conditions (one row per sample)."""

    def build():
        model, _ = bundle.build(None)
        if not conditional:
            return model, None
        per = math.ceil(num / len(seen))
        conds = torch.stack([bundle.embeddings[c] for c in seen for _ in range(per)])
        return model, conds[:num]

    return build


def _adapted_population(
    adapted: ModelBundle,
    pretrained: dict[str, ModelBundle],
    client: str,
    seen: Sequence[str],
    num: int,
) -> Builder:
    spec = ADAPTATION[adapted.method]
    if spec.conditional:  # the seen clients keep their embeddings; the backbone is as it is now
        return _population(pretrained[spec.base], True, seen, num)

    def build():
        model, _ = build_adapted(adapted, pretrained, client)
        return model, None

    return build


def forgetting_kid(
    adapted: dict[str, ModelBundle],
    pretrained: dict[str, ModelBundle],
    seen: Sequence[str],
    seen_features: np.ndarray,
    extractor: Callable[[np.ndarray], np.ndarray],
    extractor_name: str,
    cfg: KIDConfig,
    adapted_clients: Sequence[str],
    draws: int = 3,
    pretrained_after: dict[str, ModelBundle] | None = None,
    progress: bool = True,
    cache: JobCache | None = None,
) -> pd.DataFrame:
    """KID of population samples against ``seen_features`` (the pooled seen test images),
    before adaptation (``draws`` seeds per base model) and after each adaptation to one of
    ``adapted_clients``, for every method that shares weights or keeps a frozen backbone.

    ``adapted`` maps ``"<method>__<client>"`` to adapted bundles; ``pretrained_after`` is what
    the pretrained models are after adaptation (default: ``pretrained`` itself; a test passes
    a perturbed backbone).
    """
    after = pretrained_after or pretrained
    device = resolve_device(cfg.device)
    num = cfg.num_generated
    runs: list[tuple[dict, Builder, ModelBundle, int]] = []
    methods = sorted({k.split("__")[0] for k in adapted})
    methods = [m for m in methods if ADAPTATION[m].shares_weights or ADAPTATION[m].conditional]
    for base in sorted({ADAPTATION[m].base for m in methods}):
        conditional = any(ADAPTATION[m].conditional and ADAPTATION[m].base == base for m in methods)
        for r in range(draws):
            seed = derive_seed(cfg.seed, "population", base, "before", r)
            info = {"base": base, "phase": "before", "adapted_to": "", "draw": r}
            build = _population(pretrained[base], conditional, seen, num)
            runs.append((info, build, pretrained[base], seed))
    for method in methods:
        spec = ADAPTATION[method]
        for client in adapted_clients:
            bundle = adapted.get(f"{method}__{client}")
            if bundle is None:
                continue
            info = {"method": method, "base": spec.base, "phase": "after", "adapted_to": client}
            if spec.conditional:
                same = bundle.info.get("backbone_sha") == backbone_sha(after[spec.base].backbone)
                info["backbone_unchanged"] = same
                if not same:
                    log.warning("%s adaptation to %s: the shared backbone changed", method, client)
            seed = derive_seed(cfg.seed, "population", "after", client)
            build = _adapted_population(bundle, after, client, seen, num)
            runs.append((info, build, bundle, seed))

    rows = []
    for info, build, bundle, seed in tqdm(runs, desc="forgetting", disable=not progress):
        model, conds = build()
        request = SampleRequest(num, seed, cfg.sampler_steps, cfg.batch_size, device, cfg.precision)

        def draw(model=model, conds=conds, bundle=bundle, seed=seed):
            images = generate_from(
                model,
                conds,
                bundle.backbone_cfg,
                bundle.diffusion_cfg,
                num,
                seed=seed,
                steps=cfg.sampler_steps,
                batch_size=cfg.batch_size,
                device=device,
                precision=cfg.precision,
            )
            return extractor(images), images

        features, images = cached_samples(
            cache, model, conds, bundle, request, extractor_name, draw
        )
        mean, std = kid(
            features,
            seen_features,
            num_subsets=cfg.num_subsets,
            max_subset_size=cfg.max_subset_size,
            seed=derive_seed(cfg.seed, "subsets", "population"),
        )
        rows.append({**info, "kid_mean": mean, "kid_std": std, "n_generated": len(images)})
    if cache is not None:
        log.info("Forgetting: sample sets %s", cache.summary())
    table = pd.DataFrame(rows)
    table["n_real"] = len(seen_features)
    table["extractor"] = extractor_name
    return table


def forgetting_summary(
    table: pd.DataFrame, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per method: KID before and after, the change with its CI, and the noise band."""
    before = table[table["phase"] == "before"]
    per_base = before.groupby("base")["kid_mean"]
    draws = int(per_base.size().min()) if len(before) else 0
    variances = per_base.var(ddof=1).dropna()
    noise_sd = float(np.sqrt(variances.mean())) if len(variances) else float("nan")
    band = 2.0 * noise_sd * math.sqrt(1.0 + 1.0 / max(draws, 1))
    rows = []
    for method, sub in table[table["phase"] == "after"].groupby("method"):
        base = sub["base"].iloc[0]
        ref = float(per_base.mean()[base])
        change = bootstrap(sub["kid_mean"].to_numpy() - ref, confidence=confidence, seed=seed)
        rows.append(
            {
                "method": method,
                "base": base,
                "seen_kid_before": ref,
                "seen_kid_after": float(sub["kid_mean"].median()),
                "change": change.effect,
                "ci_low": change.ci_low,
                "ci_high": change.ci_high,
                "noise_sd": noise_sd,
                "noise_band": band,
                "beyond_noise": change.above(band),
                "within_noise": change.within(-band, band),
                "adaptations": change.n,
                "before_draws": draws,
                "extractor": sub["extractor"].iloc[0],
            }
        )
    return pd.DataFrame(rows)
