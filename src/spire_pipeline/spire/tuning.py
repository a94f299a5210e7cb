"""Adaptation hyperparameters chosen per method on the tuning clients, never on evaluation ones.

Every method gets the same effort: the same learning-rate x epochs grid
(:func:`~spire_pipeline.spire.sweep.sweep_jobs`), run on the tuning clients, scored by KID
against the tuning clients' own test splits; a method's choice is its cell with the lowest median
KID in which no client diverged. A conditional method (SPIRE) also chooses how its new embedding
starts: before the grid, each initialisation is scored by the DDPM loss of the tuning clients'
test images under the initial embedding (no training, no sampling); and, after it, its
personalisation guidance scale (``tuning.guidance_scales``): the chosen cell's adaptations
sampled at each scale, the lowest median KID wins. The evaluation clients are then adapted once
with the chosen values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from spire_pipeline.spire.adaptation import RETRIEVAL_IMAGES, initial_embedding
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, LocalTrainConfig
from spire_pipeline.spire.diffusion import heldout_losses, make_scheduler
from spire_pipeline.spire.evaluation import evaluate
from spire_pipeline.spire.federated import ClientData, derive_seed
from spire_pipeline.spire.job_cache import JobCache
from spire_pipeline.spire.methods import ADAPTATION
from spire_pipeline.spire.model import embedding_dim
from spire_pipeline.spire.sweep import cell_table, choose, sweep_jobs, with_diverged

log = logging.getLogger(__name__)

CHOICE_COLUMNS = [
    "method",
    "lr",
    "epochs",
    "steps",
    "embedding_init",
    "guidance",
    "tuning_score",
    "tuning_clients",
    "source",
]


@dataclass(frozen=True)
class TuningClient:
    """A tuning client's train images (model space) and held-out test images (model space)."""

    data: ClientData
    test_images: torch.Tensor


@dataclass(frozen=True)
class GridSpec:
    """The methods and cells of a grid (what :func:`sweep_jobs` runs)."""

    methods: list[str]
    learning_rates: list[float]
    epochs: list[int]


@dataclass
class TuningResult:
    """The tuning grid (per client and cell), the initialisation scores, the choices and the
    guidance scales tried at a conditional method's chosen cell (per client and scale)."""

    grid: pd.DataFrame
    inits: pd.DataFrame
    choices: pd.DataFrame
    guidance: pd.DataFrame = field(default_factory=pd.DataFrame)


def score_embedding_inits(
    method: str,
    bundle: ModelBundle,
    clients: Sequence[TuningClient],
    options: Sequence[str],
    seed: int,
) -> pd.DataFrame:
    """Held-out DDPM loss of each client's test images under each initial embedding (exactly
    the embedding :func:`~spire_pipeline.spire.adaptation.adapt` would start ``method`` from)."""
    model, _ = bundle.build(None)
    dim = embedding_dim(model)
    scheduler = make_scheduler(bundle.diffusion_cfg)

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    rows = []
    for client in clients:
        init_seed = derive_seed(seed, "adapt", method, client.data.client)

        def score(
            table: torch.Tensor, images=client.data.images[:RETRIEVAL_IMAGES], s=init_seed
        ) -> np.ndarray:
            return heldout_losses(denoise, scheduler, images, table, s)

        embs = torch.stack(
            [initial_embedding(o, bundle, dim, init_seed, score=score) for o in options]
        )
        losses = heldout_losses(
            denoise, scheduler, client.test_images, embs, derive_seed(seed, "init-score")
        )
        rows += [
            {"client": client.data.client, "embedding_init": o, "heldout_loss": float(v)}
            for o, v in zip(options, losses)
        ]
    return pd.DataFrame(rows)


def best_init(scores: pd.DataFrame) -> str:
    """The initialisation with the lowest mean held-out loss over the tuning clients."""
    means = scores.groupby("embedding_init", sort=False)["heldout_loss"].mean()
    return str(means.idxmin())


def tune(
    pretrained: dict[str, ModelBundle],
    clients: Sequence[TuningClient],
    real_features: dict[str, np.ndarray],
    extractor: Callable[[np.ndarray], np.ndarray],
    extractor_name: str,
    cfg: AdaptationConfig,
    kid_cfg: KIDConfig,
    adapt_cache: JobCache | None = None,
    sample_cache: JobCache | None = None,
) -> TuningResult:
    """Choose every method's learning rate and epochs (and SPIRE's initialisation) on
    ``clients``; ``real_features`` holds their test-split features (and may hold nothing else).
    Finished adaptations and samples are kept in and reused from the caches (:mod:`.job_cache`).
    """
    names = [c.data.client for c in clients]
    if missing := sorted(set(names) - set(real_features)):
        raise KeyError(f"tuning: no test-split features for {missing}")
    inits, chosen_init = pd.DataFrame(), {}
    for method in cfg.methods:
        spec = ADAPTATION[method]
        if spec.conditional:
            scores = score_embedding_inits(
                method, pretrained[spec.base], clients, cfg.tuning.embedding_inits, cfg.seed
            )
            chosen_init[method] = best_init(scores)
            inits = pd.concat([inits, scores.assign(method=method)], ignore_index=True)
            log.info("tuning: %s starts new embeddings from %r", method, chosen_init[method])
    grid = GridSpec(list(cfg.methods), cfg.tuning.learning_rates, cfg.tuning.epochs)
    kid_run = kid_cfg.model_copy(update={"num_generated": cfg.tuning.num_generated})
    guided_methods = [
        m for m in grid.methods if ADAPTATION[m].conditional and cfg.tuning.guidance_scales != [1.0]
    ]
    tables, kept = [], {}  # kept: a guided method's jobs, to sample its chosen cell again
    for method in grid.methods:  # one method at a time: its own initialisation
        run_cfg = cfg.model_copy(update={"embedding_init": chosen_init.get(method, "zeros")})
        one = GridSpec([method], grid.learning_rates, grid.epochs)
        jobs, diverged = sweep_jobs(
            pretrained,
            [c.data for c in clients],
            one,
            run_cfg,
            role="tuning",
            phase="tuning",
            cache=adapt_cache,
        )
        table, _ = evaluate(
            jobs, real_features, extractor, extractor_name, kid_run, cache=sample_cache
        )
        tables.append(with_diverged(table, diverged, extractor_name))
        if method in guided_methods:
            kept[method] = jobs
    table = pd.concat(tables, ignore_index=True)
    best = choose(cell_table(table)).set_index("method")
    rows, guidance = [], pd.DataFrame()
    for method in grid.methods:
        if method not in best.index:
            raise RuntimeError(
                f"tuning: every cell of {method} diverged on the tuning clients; lower "
                "client_adaptation.tuning.learning_rates"
            )
        lr, epochs = float(best.loc[method, "lr"]), int(best.loc[method, "epochs"])
        score, scale = float(best.loc[method, "kid_mean"]), 1.0
        if method in guided_methods:
            jobs = [j for j in kept[method] if (j.extra["lr"], j.extra["epochs"]) == (lr, epochs)]
            guided = []
            for w in cfg.tuning.guidance_scales:
                t, _ = evaluate(
                    [replace(j, guidance=w) for j in jobs], real_features, extractor,
                    extractor_name, kid_run, cache=sample_cache,
                )  # fmt: skip
                guided.append(t.assign(guidance=w))
            guided_table = pd.concat(guided, ignore_index=True)
            medians = guided_table.groupby("guidance")["kid_mean"].median()
            scale, score = float(medians.idxmin()), float(medians.min())
            log.info("tuning: %s samples with guidance %g (median KID by scale: %s)",
                     method, scale, medians.round(3).to_dict())  # fmt: skip
            guidance = pd.concat([guidance, guided_table.assign(method=method)])
        rows.append(
            {
                "method": method,
                "lr": lr,
                "epochs": epochs,
                "steps": np.nan,
                "embedding_init": chosen_init.get(method, ""),
                "guidance": scale,
                "tuning_score": score,
                "tuning_clients": len(clients),
                "source": "tuning",
            }
        )
    choices = pd.DataFrame(rows, columns=CHOICE_COLUMNS)
    log.info("tuning choices:\n%s", choices.to_string(index=False))
    if adapt_cache is not None:
        log.info("tuning: adaptations %s", adapt_cache.summary())
    return TuningResult(table, inits, choices, guidance.reset_index(drop=True))


def config_choices(cfg: AdaptationConfig) -> pd.DataFrame:
    """The configured values, when there are no tuning clients to choose on."""
    rows = []
    for method in cfg.methods:
        conditional = ADAPTATION[method].conditional
        rows.append(
            {
                "method": method,
                "lr": cfg.local.embedding_lr if conditional else cfg.local.lr,
                "epochs": cfg.local.epochs if cfg.local.epochs is not None else np.nan,
                "steps": cfg.local.steps if cfg.local.steps is not None else np.nan,
                "embedding_init": cfg.embedding_init if conditional else "",
                "guidance": 1.0,
                "tuning_score": np.nan,
                "tuning_clients": 0,
                "source": "config (no tuning clients)",
            }
        )
    return pd.DataFrame(rows, columns=CHOICE_COLUMNS)


def chosen_settings(
    cfg: AdaptationConfig, choices: pd.DataFrame, method: str
) -> tuple[AdaptationConfig, LocalTrainConfig]:
    """The adaptation config and local budget ``method`` runs with, from its row of
    ``choices`` (learning rate, epochs or steps, embedding initialisation)."""
    row = choices.set_index("method").loc[method]
    has_epochs = pd.notna(row["epochs"])
    budget = (
        {"epochs": int(row["epochs"]), "steps": None}
        if has_epochs
        else {"steps": int(row["steps"]), "epochs": None}
    )
    local = cfg.local.model_copy(update={"lr": row["lr"], "embedding_lr": row["lr"], **budget})
    run_cfg = cfg
    if isinstance(row["embedding_init"], str) and row["embedding_init"]:
        run_cfg = cfg.model_copy(update={"embedding_init": row["embedding_init"]})
    return run_cfg, local


def chosen_guidance(choices: pd.DataFrame | None) -> dict[str, float]:
    """Each method's personalisation guidance scale (1 for a table written before the column
    existed, and for every method without one)."""
    if choices is None or "guidance" not in choices:
        return {}
    return {
        str(m): float(w)
        for m, w in zip(choices["method"], choices["guidance"])
        if pd.notna(w) and float(w) != 1.0
    }
