"""Nodes of ``reporting``: the claims check and the run report (`spire/report.py`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.claims import check_claims
from spire_pipeline.spire.config import ClaimsConfig, DatasetConfig
from spire_pipeline.spire.plots import efficiency
from spire_pipeline.spire.report import build_report
from spire_pipeline.spire.specificity import conditioning_summary
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def summarize_claims(
    kid_table: pd.DataFrame,
    adaptation_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    tuning_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
    params: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Each of the paper's claims decided on this run's numbers: verdict, effect and CI."""
    cfg = validate_params(ClaimsConfig, params, "reporting")
    claims, comparisons = check_claims(
        kid_table, adaptation_table, forgetting_table, tuning_table, gmm_theory_slopes, cfg
    )
    shown = claims[["claim", "verdict", "effect", "ci_low", "ci_high", "n_clients"]]
    log.info("Claims:\n%s", shown.to_string(index=False))
    metrics = {}
    for r in claims.itertuples():
        number = r.claim.split(".")[0]  # DESIGN's numbering
        metrics[f"claim{number}_holds"] = {"value": float(r.holds), "step": 0}
        for key in ("effect", "ci_low", "ci_high"):
            value = float(getattr(r, key))
            if np.isfinite(value):
                metrics[f"claim{number}_{key}"] = {"value": value, "step": 0}
    return claims, comparisons, metrics


def write_report(
    run_metadata: dict[str, Any],
    parameters: dict[str, Any],
    partition_table: pd.DataFrame,
    pretraining_history: pd.DataFrame,
    kid_summary: pd.DataFrame,
    kid_reference: pd.DataFrame,
    unseen_client_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
    claims: pd.DataFrame,
    claims_comparisons: pd.DataFrame,
    adaptation_choices: pd.DataFrame,
    conditioning_strength: pd.DataFrame,
    **figures: bytes | dict,
) -> dict[str, str | bytes]:
    """The run report (markdown) with its figures: a folder that stands alone."""
    dataset = validate_params(DatasetConfig, parameters.get("dataset"), "dataset")
    return build_report(
        metadata=run_metadata,
        parameters=parameters,
        dataset_name=dataset.name,
        class_names=dataset.class_names,
        claims=claims,
        comparisons=claims_comparisons,
        adaptation_choices=adaptation_choices,
        conditioning=conditioning_summary(conditioning_strength),
        partition_table=partition_table,
        pretraining_history=pretraining_history,
        kid_summary=kid_summary,
        kid_reference=kid_reference,
        unseen_client_table=unseen_client_table,
        forgetting_table=forgetting_table,
        gmm_theory_slopes=gmm_theory_slopes,
        figures={k: resolve(v) if isinstance(v, dict) else v for k, v in figures.items()},
    )


def plot_efficiency(unseen_client_table: pd.DataFrame, kid_reference: pd.DataFrame) -> Figure:
    """Unseen-client KID against the number of parameters each method trains (log x)."""
    return efficiency(unseen_client_table, kid_reference)
