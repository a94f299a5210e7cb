"""Nodes of ``robustness_sweep``: thin wrappers over :mod:`spire_pipeline.spire.sweep`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.pipelines.client_adaptation.nodes import tuning_data
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, SweepConfig
from spire_pipeline.spire.evaluation import evaluate
from spire_pipeline.spire.plots import heatmap
from spire_pipeline.spire.sweep import cell_table, sweep_jobs, sweep_summary, with_diverged
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
    jobs, diverged = sweep_jobs(resolve(pretrained_models), data, sweep, adaptation, role="tuning")
    table, _ = evaluate(jobs, features, extractor, ext, kid_cfg)
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
    """One heat map per method: median KID over clients for each (lr, epochs) cell.

    All methods share one colour scale, so that their maps can be compared side by side. A cell
    in which any client diverged is blank and says how many did ("1/2 diverged").
    """
    cells = cell_table(table)
    grids, status = {}, {}
    for method, sub in cells.groupby("method"):
        grids[method] = sub.pivot(index="lr", columns="epochs", values="kid_mean")
        status[method] = sub.pivot(index="lr", columns="epochs", values="status")
    finite = np.concatenate([g.to_numpy().ravel() for g in grids.values()] or [np.empty(0)])
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (None, None)
    figs = {}
    for method, grid in grids.items():
        figs[method] = heatmap(
            grid.to_numpy(),
            row_labels=[f"{v:g}" for v in grid.index],
            col_labels=[str(c) for c in grid.columns],
            fmt="{:.2f}",
            cmap="magma_r",
            title=f"{method}: median KID over clients\n{table['extractor'].iloc[0]}",
            xlabel="epochs",
            ylabel="learning rate",
            cbar_label="KID",
            nan_labels=status[method].to_numpy(),
            vmin=vmin,
            vmax=vmax,
        )
    return figs
