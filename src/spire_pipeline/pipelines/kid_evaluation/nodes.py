"""Nodes of ``kid_evaluation``: thin wrappers over :mod:`spire_pipeline.spire.evaluation`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.config import DatasetConfig, KIDConfig
from spire_pipeline.spire.evaluation import (
    adapted_jobs,
    cached_features,
    evaluate,
    kid_extractor,
    kid_extractor_label,
    kid_summary,
    pretrained_jobs,
    real_reference,
)
from spire_pipeline.spire.forgetting import forgetting_kid, forgetting_summary
from spire_pipeline.spire.job_cache import sample_cache
from spire_pipeline.spire.partition import splits_from_partitions
from spire_pipeline.spire.plots import kid_bars, kid_sample_grid
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)

#: the roles whose clients are evaluated (tuning clients only choose hyperparameters)
EVALUATED_ROLES = ("seen", "unseen")


def real_features(client_splits: dict, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Features of each client's held-out test images (cached while data and extractor agree)."""
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    extractor = kid_extractor(cfg)
    tests = {
        c: s.test_images[: cfg.max_real]
        for c, s in splits_from_partitions(client_splits).items()
        if s.role in EVALUATED_ROLES
    }
    return cached_features(
        tests,
        extractor,
        extractor.name,
        extractor.image_size,
        Path(cfg.cache_dir) if cfg.cache_dir else None,
    )


def evaluate_kid(
    client_splits: dict,
    pretrained_models: dict,
    adapted_models: dict,
    real_features: dict[str, np.ndarray],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """KID of every (client, method, phase) against the client's test split.

    Phases: ``pretrained`` (seen and evaluation clients, every pretrained method that has a
    model for them) and ``adapted`` (evaluation clients, every adaptation method).
    """
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    start = time.perf_counter()
    splits = splits_from_partitions(client_splits)
    roles = {c: s.role for c, s in splits.items() if s.role in EVALUATED_ROLES}
    pretrained = resolve(pretrained_models)
    jobs = pretrained_jobs(pretrained, roles) + adapted_jobs(
        resolve(adapted_models), pretrained, roles
    )
    table, grids = evaluate(
        jobs,
        real_features,
        kid_extractor(cfg),
        kid_extractor_label(cfg),
        cfg,
        cache=sample_cache(cfg.cache_dir),  # a rerun after a kill draws only what it lacks
    )
    log.info("KID of %d (client, method, phase) in %.1f s", len(table), time.perf_counter() - start)
    samples = {f"{c}__{m}__{p}": imgs for (c, m, p), imgs in grids.items()}
    return table, samples


def evaluate_forgetting(
    client_splits: dict,
    pretrained_models: dict,
    adapted_models: dict,
    real_features: dict[str, np.ndarray],
    params: dict[str, Any],
) -> pd.DataFrame:
    """KID of the seen population's samples against the pooled seen test images, before and
    after adapting each method to the first ``forgetting_clients`` evaluation clients."""
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    splits = splits_from_partitions(client_splits)
    seen = sorted(c for c, s in splits.items() if s.role == "seen")
    unseen = sorted(c for c, s in splits.items() if s.role == "unseen")
    return forgetting_kid(
        resolve(adapted_models),
        resolve(pretrained_models),
        seen,
        np.concatenate([real_features[c] for c in seen]),
        kid_extractor(cfg),
        kid_extractor_label(cfg),
        cfg,
        adapted_clients=unseen[: cfg.forgetting_clients],
        draws=cfg.forgetting_draws,
        cache=sample_cache(cfg.cache_dir),
    )


def summarize_kid(
    table: pd.DataFrame, forgetting_kid_table: pd.DataFrame, adaptation_table: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Summary, forgetting and unseen-client tables, and the MLflow metrics (named by extractor)."""
    summary = kid_summary(table)
    forgetting = forgetting_summary(forgetting_kid_table)
    unseen = unseen_client_table(table, adaptation_table)
    log.info("KID summary:\n%s", summary.to_string(index=False))
    log.info("Unseen clients:\n%s", unseen.to_string(index=False))
    log.info("Forgetting:\n%s", forgetting.to_string(index=False))
    ext = table["extractor"].iloc[0]
    metrics = {}
    for r in table.itertuples():
        metrics[f"{ext}.{r.phase}.{r.method}.{r.client}"] = {"value": r.kid_mean, "step": 0}
    for r in summary.itertuples():
        metrics[f"{ext}.{r.phase}.{r.role}.{r.method}.median"] = {"value": r.kid_median, "step": 0}
    for r in forgetting.itertuples():
        metrics[f"{ext}.forgetting.{r.method}"] = {"value": r.change, "step": 0}
    return summary, forgetting, unseen, metrics


def unseen_client_table(kid_table: pd.DataFrame, adaptation_table: pd.DataFrame) -> pd.DataFrame:
    """Per adaptation method: parameters trained, adaptation time and unseen-client KID."""
    kids = kid_table[kid_table["phase"] == "adapted"].groupby("method")["kid_mean"]
    cost = adaptation_table.groupby("method").agg(
        trained_params=("trained_params", "first"),
        trained_pct=("trained_pct", "first"),
        seconds_median=("seconds", "median"),
    )
    out = cost.join(
        pd.DataFrame({"kid_median": kids.median(), "kid_worst": kids.max(), "clients": kids.size()})
    )
    out["extractor"] = kid_table["extractor"].iloc[0]
    return out.reset_index().sort_values("kid_median")


def real_reference_kid(
    client_splits: dict, real_features: dict[str, np.ndarray], params: dict[str, Any]
) -> pd.DataFrame:
    """KID between two halves of each client's test split: how far from 0 KID lands by chance."""
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    roles = {c: s.role for c, s in splits_from_partitions(client_splits).items()}
    table = real_reference(real_features, roles, cfg, kid_extractor_label(cfg))
    log.info(
        "KID of real vs real (two halves of each client's test split): median %.4g, range "
        "[%.4g, %.4g]",
        table["kid_mean"].median(),
        table["kid_mean"].min(),
        table["kid_mean"].max(),
    )
    return table


def plot_kid_bars(table: pd.DataFrame, reference: pd.DataFrame) -> Figure:
    """KID per client and method (error bars: std over subsets), one panel per phase."""
    return kid_bars(table, reference)


def plot_kid_sample_grids(
    client_splits: dict, samples: dict[str, np.ndarray], dataset: dict[str, Any]
) -> dict[str, Figure]:
    """One figure per client: a row of real test images, then a row per (method, phase)."""
    class_names = validate_params(DatasetConfig, dataset, "dataset").class_names
    splits = splits_from_partitions(client_splits)
    per_client: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for key, imgs in sorted(samples.items()):
        client, method, phase = key.split("__")
        per_client.setdefault(client, []).append((method, phase, imgs))
    figs = {}
    for client, rows in per_client.items():
        s = splits[client]
        n = max(len(r[2]) for r in rows)
        figs[client] = kid_sample_grid(
            client, s.test_images[:n], rows, np.unique(s.test_labels).tolist(), class_names
        )
    return figs
