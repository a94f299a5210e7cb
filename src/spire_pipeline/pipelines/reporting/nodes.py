"""Nodes of ``reporting``: the claims check and the run report (`spire/report.py`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.spire.claims import check_claims
from spire_pipeline.spire.config import DatasetConfig
from spire_pipeline.spire.plots import efficiency
from spire_pipeline.spire.report import build_report
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def summarize_claims(
    kid_summary: pd.DataFrame,
    unseen_client_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
) -> tuple[pd.DataFrame, dict]:
    """Which of the paper's claims hold on this run's numbers."""
    claims = check_claims(kid_summary, unseen_client_table, forgetting_table, gmm_theory_slopes)
    log.info("Claims:\n%s", claims.to_string(index=False))
    # named by the claim's own number (DESIGN's numbering; 4 is the sweep's, not checked here)
    metrics = {
        f"claim{claim.split('.')[0]}_holds": {"value": float(h), "step": 0}
        for claim, h in zip(claims["claim"], claims["holds"])
    }
    return claims, metrics


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
