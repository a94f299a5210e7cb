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
from spire_pipeline.spire.federated import derive_seed
from spire_pipeline.spire.forgetting import forgetting_kid, forgetting_summary
from spire_pipeline.spire.job_cache import sample_cache
from spire_pipeline.spire.methods import ADAPTATION
from spire_pipeline.spire.partition import splits_from_partitions
from spire_pipeline.spire.plots import kid_bars, kid_sample_grid
from spire_pipeline.spire.specificity import (
    CONDITIONING_COLUMNS,
    accuracy,
    cached_classifier,
    conditioning_summary,
    conditioning_table,
    label_histogram,
)
from spire_pipeline.spire.tuning import chosen_guidance
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
    adaptation_choices: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[tuple[str, str, str], np.ndarray]]:
    """KID of every (client, method, phase) against the client's test split, the first samples
    for the grids, and every sample (kept in memory for the conditioning strength).

    Phases: ``pretrained`` (seen and evaluation clients, every pretrained method that has a
    model for them) and ``adapted`` (evaluation clients, every adaptation method). A
    conditional method samples with the guidance scale chosen on the tuning clients
    (``adaptation_choices``), after pretraining too.
    """
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    start = time.perf_counter()
    splits = splits_from_partitions(client_splits)
    roles = {c: s.role for c, s in splits.items() if s.role in EVALUATED_ROLES}
    pretrained = resolve(pretrained_models)
    guidance = chosen_guidance(adaptation_choices)
    if guidance:
        log.info("KID: personalisation guidance chosen on the tuning clients: %s", guidance)
    base_guidance = {ADAPTATION[m].base: w for m, w in guidance.items()}
    jobs = pretrained_jobs(pretrained, roles, base_guidance) + adapted_jobs(
        resolve(adapted_models), pretrained, roles, guidance
    )
    generated: dict[tuple[str, str, str], np.ndarray] = {}
    table, grids = evaluate(
        jobs,
        real_features,
        kid_extractor(cfg),
        kid_extractor_label(cfg),
        cfg,
        cache=sample_cache(cfg.cache_dir),  # a rerun after a kill draws only what it lacks
        samples=generated,
    )
    log.info("KID of %d (client, method, phase) in %.1f s", len(table), time.perf_counter() - start)
    samples = {f"{c}__{m}__{p}": imgs for (c, m, p), imgs in grids.items()}
    return table, samples, generated


def measure_conditioning(
    client_splits: dict, generated: dict[tuple[str, str, str], np.ndarray], params: dict[str, Any]
) -> tuple[pd.DataFrame, dict]:
    """Conditioning strength of the samples KID drew: per (client, method, phase), the share in
    the client's own classes and the TV distance of their predicted label histogram from the
    client's (test-split) label histogram, by a classifier trained on the seen clients' train
    splits (seeded, cached by content)."""
    cfg = validate_params(KIDConfig, params, "kid_evaluation")
    if not cfg.conditioning.enabled:
        return pd.DataFrame(columns=CONDITIONING_COLUMNS), {}
    start = time.perf_counter()
    splits = splits_from_partitions(client_splits)
    num_classes = 1 + max(
        int(np.concatenate([s.train_labels, s.test_labels]).max(initial=0)) for s in splits.values()
    )
    seen = [s for s in splits.values() if s.role == "seen"]
    images = np.concatenate([s.train_images for s in seen])
    labels = np.concatenate([s.train_labels for s in seen])
    pick = np.random.default_rng(derive_seed(cfg.seed, "classifier")).permutation(len(labels))
    pick = np.sort(pick[: cfg.conditioning.max_images])
    net = cached_classifier(
        images[pick],
        labels[pick],
        num_classes,
        derive_seed(cfg.seed, "classifier"),
        epochs=cfg.conditioning.epochs,
        batch_size=cfg.conditioning.batch_size,
        cache_dir=cfg.cache_dir,
    )
    acc = accuracy(
        net,
        np.concatenate([s.test_images for s in seen]),
        np.concatenate([s.test_labels for s in seen]),
    )
    table = conditioning_table(
        generated,
        {c: label_histogram(s.test_labels, num_classes) for c, s in splits.items()},
        {c: s.role for c, s in splits.items()},
        net,
        acc,
    )
    summary = conditioning_summary(table)
    log.info(
        "Conditioning strength (classifier %.1f %% accurate on the seen test splits; %.1f s):\n%s",
        100 * acc,
        time.perf_counter() - start,
        summary.to_string(index=False),
    )
    metrics = {"classifier_accuracy": {"value": acc, "step": 0}}
    for r in summary.itertuples():
        for k in ("own_class_share", "tv_median"):
            metrics[f"{r.phase}.{r.role}.{r.method}.{k}"] = {
                "value": float(getattr(r, k)),
                "step": 0,
            }
    return table, metrics


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
