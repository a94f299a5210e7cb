"""Nodes of ``client_adaptation``: thin wrappers over :mod:`spire_pipeline.spire.tuning` and
:mod:`spire_pipeline.spire.adaptation`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.evaluation import cached_features, kid_extractor, kid_extractor_label
from spire_pipeline.spire.federated import ClientData
from spire_pipeline.spire.job_cache import adaptation_cache, cached_adapt, sample_cache
from spire_pipeline.spire.partition import ClientSplit, splits_from_partitions
from spire_pipeline.spire.tuning import TuningClient, chosen_settings, config_choices, tune
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def clients_with_role(client_splits: dict, role: str) -> list[ClientSplit]:
    """The splits of the clients with ``role`` (``seen``, ``tuning`` or ``unseen``)."""
    return [s for s in splits_from_partitions(client_splits).values() if s.role == role]


def unseen_clients(client_splits: dict) -> list[ClientData]:
    """The evaluation (unseen) clients' train splits, in model space."""
    return [
        ClientData(s.client, to_model_space(s.train_images))
        for s in clients_with_role(client_splits, "unseen")
    ]


def tuning_data(
    client_splits: dict, kid_cfg: KIDConfig
) -> tuple[list[TuningClient], dict, Any, str]:
    """The tuning clients (train and test images), their test-split features, the extractor
    and its label. Nothing of any other client is used."""
    tuning = clients_with_role(client_splits, "tuning")
    clients = [
        TuningClient(
            ClientData(s.client, to_model_space(s.train_images)), to_model_space(s.test_images)
        )
        for s in tuning
    ]
    extractor = kid_extractor(kid_cfg)
    features = cached_features(
        {s.client: s.test_images[: kid_cfg.max_real] for s in tuning},
        extractor,
        extractor.name,
        extractor.image_size,
        Path(kid_cfg.cache_dir) if kid_cfg.cache_dir else None,
    )
    return clients, features, extractor, kid_extractor_label(kid_cfg)


def tune_adaptation(
    client_splits: dict,
    pretrained_models: dict,
    params: dict[str, Any],
    kid_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Choose every method's learning rate and epochs (and SPIRE's embedding initialisation)
    on the tuning clients: the same grid for every method, scored by KID on the tuning
    clients' test splits. Without tuning clients the configured values are used."""
    cfg = validate_params(AdaptationConfig, params, "client_adaptation")
    kid_cfg = validate_params(KIDConfig, kid_params, "kid_evaluation")
    if not clients_with_role(client_splits, "tuning"):
        log.warning(
            "No tuning clients (data_partitioning.num_tuning_clients is 0): adaptation uses the "
            "configured learning rates and steps, chosen by nobody on this data"
        )
        grid = pd.DataFrame(columns=["method", "client", "lr", "epochs", "kid_mean", "diverged"])
        inits = pd.DataFrame(columns=["client", "embedding_init", "heldout_loss", "method"])
        return config_choices(cfg), grid, inits, {}
    clients, features, extractor, label = tuning_data(client_splits, kid_cfg)
    result = tune(
        resolve(pretrained_models),
        clients,
        features,
        extractor,
        label,
        cfg,
        kid_cfg,
        adapt_cache=adaptation_cache(cfg.cache_dir),
        sample_cache=sample_cache(kid_cfg.cache_dir),
    )
    metrics = {
        f"{r.method}.{k}": {"value": float(getattr(r, k)), "step": 0}
        for r in result.choices.itertuples()
        for k in ("lr", "epochs", "guidance", "tuning_score")
    }
    return result.choices, result.grid, result.inits, metrics


def adapt_unseen_clients(
    client_splits: dict,
    pretrained_models: dict,
    adaptation_choices: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[dict[str, ModelBundle], pd.DataFrame, dict]:
    """Adapt every method to every evaluation client once, with the values chosen on the tuning
    clients; count what each trains."""
    cfg = validate_params(AdaptationConfig, params, "client_adaptation")
    pretrained = resolve(pretrained_models)
    clients = unseen_clients(client_splits)
    if not clients:
        raise ValueError(
            "client_adaptation: the partition has no unseen clients "
            "(data_partitioning.num_unseen_clients is 0)"
        )
    adapted, rows = {}, []
    jobs = [(m, c) for m in cfg.methods for c in clients]
    cache = adaptation_cache(cfg.cache_dir)  # a rerun after a kill redoes only the others
    for method, client in tqdm(jobs, desc="adapt", unit="client"):
        run_cfg, local = chosen_settings(cfg, adaptation_choices, method)
        a = cached_adapt(cache, method, pretrained, client, run_cfg, local=local)
        adapted[f"{method}__{client.client}"] = a.bundle
        rows.append(
            {
                "client": client.client,
                "method": method,
                "trained_params": a.trained_params,
                "trained_pct": a.trained_pct,
                "seconds": a.seconds,
                "steps": len(a.result.losses),
                "lr": local.lr,
                "final_loss": a.result.final_loss,
            }
        )
    if cache is not None:
        log.info("Adaptations: %s", cache.summary())
    table = pd.DataFrame(rows)
    per_method = table.groupby("method").agg(
        trained_params=("trained_params", "first"),
        trained_pct=("trained_pct", "first"),
        seconds=("seconds", "median"),
        final_loss=("final_loss", "median"),
    )
    log.info("Adaptation:\n%s", per_method.to_string())
    metrics = {
        f"{m}.{k}": {"value": float(v), "step": 0}
        for m, r in per_method.iterrows()
        for k, v in r.items()
    }
    return adapted, table, metrics
