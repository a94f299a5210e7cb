"""Nodes of ``robustness_sweep``: thin wrappers over :mod:`spire_pipeline.spire.sweep`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.pipelines.client_adaptation.nodes import unseen_clients
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, SweepConfig
from spire_pipeline.spire.evaluation import evaluate, kid_extractor, kid_extractor_label
from spire_pipeline.spire.plots import sweep_heatmaps
from spire_pipeline.spire.sweep import sweep_jobs, sweep_summary
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def run_sweep(
    client_splits: dict,
    pretrained_models: dict,
    real_features: dict[str, np.ndarray],
    sweep_params: dict[str, Any],
    adaptation_params: dict[str, Any],
    kid_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Adapt on the grid and measure KID of every cell on the client's test split."""
    sweep = validate_params(SweepConfig, sweep_params, "robustness_sweep")
    adaptation = validate_params(AdaptationConfig, adaptation_params, "client_adaptation")
    kid_cfg = validate_params(KIDConfig, kid_params, "kid_evaluation")
    kid_cfg = kid_cfg.model_copy(update={"num_generated": sweep.num_generated, "seed": sweep.seed})
    clients = unseen_clients(client_splits)[: sweep.clients]
    jobs, diverged = sweep_jobs(resolve(pretrained_models), clients, sweep, adaptation)
    ext = kid_extractor_label(kid_cfg)
    table, _ = evaluate(jobs, real_features, kid_extractor(kid_cfg), ext, kid_cfg)
    if diverged:  # kept as rows with no KID, so that the grid shows where training failed
        failed = pd.DataFrame(diverged).assign(
            role="unseen", phase="sweep", kid_mean=np.nan, extractor=ext
        )
        table = pd.concat([table, failed], ignore_index=True)
    table["diverged"] = table["kid_mean"].isna()
    summary = sweep_summary(table)
    log.info("Robustness sweep:\n%s", summary.to_string(index=False))
    metrics = {
        f"{ext}.{r.method}.{k}": {"value": float(getattr(r, k)), "step": 0}
        for r in summary.itertuples()
        for k in ("kid_median", "kid_worst", "spread", "diverged_cells")
    }
    return table, summary, metrics


def plot_sweep_heatmaps(table: pd.DataFrame) -> dict[str, Figure]:
    """One heat map per method: median KID over clients for each (lr, epochs) cell, on one
    colour scale shared by all methods."""
    return sweep_heatmaps(table)
