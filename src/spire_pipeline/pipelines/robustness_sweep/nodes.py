"""Nodes of ``robustness_sweep``: thin wrappers over :mod:`spire_pipeline.spire.sweep`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.pipelines.client_adaptation.nodes import tuning_data
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, SweepConfig
from spire_pipeline.spire.evaluation import evaluate
from spire_pipeline.spire.job_cache import adaptation_cache, sample_cache
from spire_pipeline.spire.plots import sweep_heatmaps
from spire_pipeline.spire.sweep import sweep_jobs, sweep_summary, with_diverged
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def run_sweep(
    client_splits: dict,
    pretrained_models: dict,
    sweep_params: dict[str, Any],
    adaptation_params: dict[str, Any],
    kid_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Adapt on the grid and measure KID of every cell on the tuning client's test split.

    The sweep runs on the tuning clients: the evaluation clients' test splits only report the
    main job's results.
    """
    sweep = validate_params(SweepConfig, sweep_params, "robustness_sweep")
    adaptation = validate_params(AdaptationConfig, adaptation_params, "client_adaptation")
    kid_cfg = validate_params(KIDConfig, kid_params, "kid_evaluation")
    kid_cfg = kid_cfg.model_copy(update={"num_generated": sweep.num_generated, "seed": sweep.seed})
    clients, features, extractor, ext = tuning_data(client_splits, kid_cfg)
    if not clients:
        raise ValueError(
            "robustness_sweep runs on the tuning clients, and the partition has none: set "
            "data_partitioning.num_tuning_clients"
        )
    data = [c.data for c in clients[: sweep.clients]]
    jobs, diverged = sweep_jobs(
        resolve(pretrained_models),
        data,
        sweep,
        adaptation,
        role="tuning",
        cache=adaptation_cache(adaptation.cache_dir),
    )
    table, _ = evaluate(
        jobs, features, extractor, ext, kid_cfg, cache=sample_cache(kid_cfg.cache_dir)
    )
    # diverged runs are kept as rows with no KID, so that the grid shows where training failed
    table = with_diverged(table, diverged, ext)
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
