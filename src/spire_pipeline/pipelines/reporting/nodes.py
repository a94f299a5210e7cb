"""Nodes of ``reporting``: the run's headline tables in one markdown report."""

from __future__ import annotations

import logging

import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire.claims import check_claims, markdown_table
from spire_pipeline.spire.plots import efficiency

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
    partition_table: pd.DataFrame,
    pretraining_history: pd.DataFrame,
    kid_summary: pd.DataFrame,
    unseen_client_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
    claims: pd.DataFrame,
) -> str:
    """A markdown report of the run (data, pretraining, KID, adaptation, forgetting, theory)."""
    last = pretraining_history.groupby("method").agg(
        rounds=("round", "max"),
        final_loss=("loss_mean", "last"),
        seconds_per_round=("seconds", "mean"),
        bytes_up_per_round=("bytes_up", "mean"),
    )
    last["rounds"] += 1
    parts = [
        "# SPIRE run report",
        "## Claims",
        markdown_table(claims),
        "## Clients",
        markdown_table(partition_table),
        "## Federated pretraining",
        markdown_table(last.reset_index()),
        "## Per-client KID (median over clients)",
        markdown_table(kid_summary),
        "## Unseen clients: adaptation",
        markdown_table(unseen_client_table),
        "## Forgetting (seen-client KID before and after adapting)",
        markdown_table(forgetting_table),
        "## Theory: fitted slopes",
        markdown_table(gmm_theory_slopes),
    ]
    return "\n\n".join(parts) + "\n"


def plot_efficiency(unseen_client_table: pd.DataFrame, kid_reference: pd.DataFrame) -> Figure:
    """Unseen-client KID against the number of parameters each method trains (log x)."""
    return efficiency(unseen_client_table, kid_reference)
