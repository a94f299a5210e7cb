"""Nodes of the frontier pipeline: thin wrappers over :mod:`spire_pipeline.spire.frontier`."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from spire_pipeline.spire.config import (
    AdaptationConfig,
    FrontierConfig,
    KIDConfig,
    PartitionConfig,
    PretrainingConfig,
)
from spire_pipeline.spire.evaluation import kid_extractor, kid_extractor_label
from spire_pipeline.spire.frontier import frontier_table, run_frontier
from spire_pipeline.spire.plots.frontier import frontier_figure
from spire_pipeline.spire.tuning import config_choices
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def run_frontier_grid(
    raw_train: dict[str, np.ndarray],
    raw_test: dict[str, np.ndarray],
    adaptation_choices: pd.DataFrame | None,
    params: dict[str, Any],
    partition_params: dict[str, Any],
    pretraining_params: dict[str, Any],
    adaptation_params: dict[str, Any],
    kid_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every setting of the grid: per evaluation client and method, KID and conditioning
    strength; and the guidance scales tried on the tuning clients."""
    cfg = validate_params(FrontierConfig, params, "personalization_frontier")
    pretraining = validate_params(PretrainingConfig, pretraining_params, "federated_pretraining")
    adaptation = validate_params(AdaptationConfig, adaptation_params, "client_adaptation")
    kid_cfg = validate_params(KIDConfig, kid_params, "kid_evaluation")
    partition = validate_params(PartitionConfig, partition_params, "data_partitioning")
    if cfg.choices == "configured":
        choices = config_choices(adaptation)
        log.warning("frontier: adaptation uses client_adaptation's values, chosen by nobody")
    elif adaptation_choices is None:
        raise ValueError(
            "personalization_frontier.choices is main_job, but there is no adaptation_choices "
            "table (data/06_models/adaptation_choices.csv) yet: run the main job first, or set "
            "personalization_frontier.choices: configured"
        )
    else:
        choices = adaptation_choices
        log.info("frontier: adaptation values chosen on the main job's tuning clients:\n%s",
                 choices.to_string(index=False))  # fmt: skip
    if pretraining.threads:
        torch.set_num_threads(pretraining.threads)
    start = time.perf_counter()
    images = np.concatenate([raw_train["images"], raw_test["images"]])
    labels = np.concatenate([raw_train["labels"], raw_test["labels"]])
    result = run_frontier(
        images,
        labels,
        cfg,
        partition,
        pretraining,
        adaptation,
        choices,
        kid_cfg,
        kid_extractor(kid_cfg),
        kid_extractor_label(kid_cfg),
    )
    log.info("frontier: %d settings in %.1f min", result.kid["setting"].nunique(),
             (time.perf_counter() - start) / 60)  # fmt: skip
    return result.kid, result.guidance


def summarize_frontier(kid: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """One row per setting (gap, CI, verdict, specificity) and its MLflow metrics."""
    cfg = validate_params(FrontierConfig, params, "personalization_frontier")
    table = frontier_table(kid, cfg.confidence, cfg.bootstrap_samples, cfg.seed)
    log.info("Frontier:\n%s", table.to_string(index=False))
    metrics = {}
    for r in table.itertuples():
        name = r.setting.replace("/", ".")
        for k in ("gap", "ci_low", "ci_high", "specificity"):
            value = float(getattr(r, k))
            if np.isfinite(value):
                metrics[f"{name}.{k}"] = {"value": value, "step": 0}
    return table, metrics


def plot_frontier(table: pd.DataFrame) -> Figure:
    """The gap with its CI against shots, one line per scheme and variant; the other factors
    at the centre's shots."""
    return frontier_figure(table)
