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
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.federated import ClientData, InProcessEngine, derive_seed
from spire_pipeline.spire.generate import generate
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.model import build_backbone, count_parameters
from spire_pipeline.spire.partition import splits_from_partitions
from spire_pipeline.spire.plots import image_grid, line_plot
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
            last = history[-1] if history else {}
            log.info(
                "%s (%s engine): final mean loss %.4f, %.1f s/round",
                method,
                cfg.engine,
                last.get("loss_mean", np.nan),
                np.mean([h["seconds"] for h in history]) if history else np.nan,
            )
    bundles, rows, metrics = {}, [], {}
    for method in cfg.methods:
        bundles[method], history = results[method]
        rows += [row for rec in history for row in history_rows(rec)]
        metrics |= round_metrics(method, history)
    return bundles, pd.DataFrame(rows), metrics


def round_metrics(method: str, history: list[dict]) -> dict[str, list[dict]]:
    """MLflow metric histories of one method's rounds (step = round); a client left out of a
    round has ``<method>.failed.<client>`` or ``<method>.missing.<client>`` = 1 at that step."""
    metrics: dict[str, list[dict]] = {}

    def add(name: str, value: float, step: int) -> None:
        metrics.setdefault(f"{method}.{name}", []).append({"value": float(value), "step": step})

    for rec in history:
        step = rec["round"]
        for key in ("loss_mean", "bytes_down", "bytes_up", "seconds"):
            add(key, rec[key], step)
        for key in ("failed", "missing"):
            add(f"clients_{key}", len(rec.get(key, [])), step)
            for client in rec.get(key, []):
                add(f"{key}.{client}", 1.0, step)
        for client, loss in rec["client_losses"].items():
            add(f"loss.{client}", loss, step)
    return metrics


def history_rows(rec: dict) -> list[dict]:
    """The rows of one round record in the history table: one per client that trained."""
    keys = ("method", "round", "loss_mean", "bytes_down", "bytes_up", "seconds")
    return [
        {
            **{k: rec[k] for k in keys},
            "client": client,
            "client_loss": loss,
            "num_clients": len(rec["clients"]),
            "failed": ",".join(rec["failed"]),
            "missing": ",".join(rec.get("missing", [])),
        }
        for client, loss in rec["client_losses"].items()
    ]


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
    bundles: dict[str, ModelBundle], client_splits: dict, params: dict[str, Any]
) -> dict[str, Figure]:
    """Per method, one row of samples per seen client (real images in the first columns)."""
    cfg = validate_params(PretrainingConfig, params, "federated_pretraining")
    splits = splits_from_partitions(client_splits)
    seen = [s for s in splits.values() if s.role == "seen"]
    n = cfg.grid_samples_per_client
    figs = {}
    for method, bundle in resolve(bundles).items():
        rows, labels = [], []
        for k, s in enumerate(seen):
            client = s.client if PRETRAINING[method].per_client else None
            fake = generate(bundle, client, n, seed=derive_seed(cfg.seed, "grid", k))
            rows.append(np.concatenate([s.train_images[:3], fake]))
            labels.append(f"{s.client} {sorted(np.unique(s.train_labels).tolist())}")
        figs[method] = image_grid(
            rows, labels, title=f"{method}: 3 real | {n} generated per seen client"
        )
    return figs


def plot_loss_curves(history: pd.DataFrame) -> Figure:
    """Mean local loss per round, one line per method."""
    per_round = history.groupby(["method", "round"])["loss_mean"].first().reset_index()
    series = {
        m: (g["round"].to_numpy(), g["loss_mean"].to_numpy())
        for m, g in per_round.groupby("method")
    }
    return line_plot(
        series, title="Federated pretraining", xlabel="round", ylabel="mean local DDPM loss"
    )
