"""Nodes of ``client_adaptation``: thin wrappers over :mod:`spire_pipeline.spire.adaptation`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.federated import ClientData
from spire_pipeline.spire.partition import splits_from_partitions
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def unseen_clients(client_splits: dict) -> list[ClientData]:
    """The unseen clients' train splits, in model space."""
    return [
        ClientData(s.client, to_model_space(s.train_images))
        for s in splits_from_partitions(client_splits).values()
        if s.role == "unseen"
    ]


def adapt_unseen_clients(
    client_splits: dict, pretrained_models: dict, params: dict[str, Any]
) -> tuple[dict[str, ModelBundle], pd.DataFrame, dict]:
    """Adapt every configured method to every unseen client; count what each trains."""
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
    for method, client in tqdm(jobs, desc="adapt", unit="client"):
        a = adapt(method, pretrained, client, cfg)
        adapted[f"{method}__{client.client}"] = a.bundle
        rows.append(
            {
                "client": client.client,
                "method": method,
                "trained_params": a.trained_params,
                "trained_pct": a.trained_pct,
                "seconds": a.seconds,
                "steps": len(a.result.losses),
                "final_loss": a.result.final_loss,
            }
        )
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
