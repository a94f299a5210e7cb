"""Nodes of ``federated_pretraining``: thin wrappers over :mod:`spire_pipeline.spire.federated`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import DatasetConfig, PretrainingConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.federated import ClientData, InProcessEngine, derive_seed
from spire_pipeline.spire.generate import generate
from spire_pipeline.spire.heldout import validation_table
from spire_pipeline.spire.history import history_metrics, history_rows, history_summary
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.model import build_backbone, count_parameters
from spire_pipeline.spire.partition import splits_from_partitions
from spire_pipeline.spire.plots import loss_curves, pretraining_sample_grid
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def seen_clients(client_splits: dict) -> tuple[list[ClientData], dict[str, list[int]]]:
    """The seen clients' train splits in model space, and each one's classes."""
    splits = splits_from_partitions(client_splits)
    seen = [s for s in splits.values() if s.role == "seen"]
    data = [ClientData(s.client, to_model_space(s.train_images)) for s in seen]
    classes = {s.client: sorted(np.unique(s.train_labels).tolist()) for s in seen}
    return data, classes


def make_engine(cfg: PretrainingConfig, clients: list[ClientData]):
    """The configured engine (a context manager whose ``pretrain`` yields each method)."""
    if cfg.engine == "flower":
        from spire_pipeline.flower.engine import FlowerEngine

        return FlowerEngine(cfg, clients)
    return InProcessEngine(cfg, clients)


def pretrain_methods(
    client_splits: dict, params: dict[str, Any]
) -> tuple[dict[str, ModelBundle], pd.DataFrame, dict[str, list[dict]]]:
    """Pretrain every configured method on the seen clients; resume from checkpoints."""
    cfg = validate_params(PretrainingConfig, params, "federated_pretraining")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    clients, _ = seen_clients(client_splits)
    n_params = count_parameters(build_backbone(cfg.backbone))
    dim = 4 * cfg.backbone.block_out_channels[0]
    log.info(
        "Backbone: %d parameters; client embedding: %d numbers (%.4f %% of the weights)",
        n_params,
        dim,
        100 * dim / n_params,
    )
    results = {}
    with make_engine(cfg, clients) as engine:
        for method, bundle, history in engine.pretrain(cfg.methods):
            bundle.info |= {"backbone_params": n_params, "embedding_dim": dim}
            results[method] = bundle, history
            log.info(
                "%s (%s engine): final mean loss %.4f, %.1f s/round",
                method,
                cfg.engine,
                *history_summary(history),
            )
    bundles, rows, metrics = {}, [], {}
    for method in cfg.methods:
        bundles[method], history = results[method]
        rows += history_rows(history)
        metrics |= history_metrics(method, history)
    return bundles, pd.DataFrame(rows), metrics


def validate_pretrained(
    bundles: dict[str, ModelBundle], client_splits: dict, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict]:
    """DDPM loss of every method on the seen clients' validation images (held out)."""
    cfg = validate_params(PretrainingConfig, params, "federated_pretraining")
    images = {
        s.client: to_model_space(s.val_images)
        for s in splits_from_partitions(client_splits).values()
        if s.role == "seen"
    }
    table = validation_table(resolve(bundles), images, cfg.seed)
    per_method = table.groupby("method")["val_loss"].mean()
    log.info("Validation loss (seen clients' held-out images):\n%s", per_method.to_string())
    metrics = {f"{m}.val_loss": {"value": float(v), "step": 0} for m, v in per_method.items()}
    return table, metrics


def client_embeddings_table(bundles: dict[str, ModelBundle]) -> pd.DataFrame:
    """One row per (method, client) embedding: its id and its numbers."""
    rows = []
    for method, b in resolve(bundles).items():
        for client, e in sorted(b.embeddings.items()):
            rows.append(
                {
                    "method": method,
                    "client": client,
                    **{f"e{i}": float(v) for i, v in enumerate(e.tolist())},
                }
            )
    return pd.DataFrame(rows)


def plot_sample_grids(
    bundles: dict[str, ModelBundle],
    client_splits: dict,
    params: dict[str, Any],
    dataset: dict[str, Any],
) -> dict[str, Figure]:
    """Per method, one row of samples per seen client (real images in the first columns)."""
    cfg = validate_params(PretrainingConfig, params, "federated_pretraining")
    class_names = validate_params(DatasetConfig, dataset, "dataset").class_names
    seen = [s for s in splits_from_partitions(client_splits).values() if s.role == "seen"]
    figs = {}
    for method, bundle in resolve(bundles).items():
        rows = []
        for k, s in enumerate(seen):
            client = s.client if PRETRAINING[method].per_client else None
            fake = generate(
                bundle,
                client,
                cfg.grid_samples_per_client,
                seed=derive_seed(cfg.seed, "grid", k),
                precision=cfg.local.precision,
            )
            rows.append(
                (
                    s.client,
                    np.unique(s.train_labels).tolist(),
                    np.concatenate([s.train_images[:3], fake]),
                )
            )
        figs[method] = pretraining_sample_grid(method, rows, n_real=3, class_names=class_names)
    return figs


def plot_loss_curves(history: pd.DataFrame) -> Figure:
    """Mean local loss per round, one line per method (moving average, log axis)."""
    return loss_curves(history)
