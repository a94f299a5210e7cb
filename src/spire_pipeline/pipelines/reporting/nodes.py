"""Nodes of ``reporting``: the run's headline tables in one markdown report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire.claims import check_claims, markdown_table
from spire_pipeline.spire.config import ClaimsConfig
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
    partition_table: pd.DataFrame,
    pretraining_history: pd.DataFrame,
    kid_summary: pd.DataFrame,
    unseen_client_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
    claims: pd.DataFrame,
    comparisons: pd.DataFrame,
    adaptation_choices: pd.DataFrame,
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
        markdown_table(claims.drop(columns=["holds"])),
        "### Paired comparisons behind the claims (SPIRE - baseline, median over clients)",
        markdown_table(comparisons),
        "## Clients",
        markdown_table(partition_table),
        "## Federated pretraining",
        markdown_table(last.reset_index()),
        "## Per-client KID (median over clients)",
        markdown_table(kid_summary),
        "## Adaptation hyperparameters chosen on the tuning clients",
        markdown_table(adaptation_choices),
        "## Unseen clients: adaptation",
        markdown_table(unseen_client_table),
        "## Forgetting (seen-client KID before and after adapting)",
        markdown_table(forgetting_table),
        "## Theory: fitted slopes",
        markdown_table(gmm_theory_slopes),
    ]
    return "\n\n".join(parts) + "\n"


def plot_efficiency(unseen_client_table: pd.DataFrame) -> Figure:
    """Unseen-client KID against the number of parameters each method trains (log x)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for r in unseen_client_table.itertuples():
        ax.scatter(r.trained_params, r.kid_median, s=40)
        ax.annotate(
            r.method,
            (r.trained_params, r.kid_median),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="parameters trained per unseen client (log)",
        ylabel=f"median unseen-client KID ({unseen_client_table['extractor'].iloc[0]})",
        title="Adaptation: quality vs parameters trained",
    )
    ax.grid(alpha=0.3)
    ymin = float(np.nanmin(unseen_client_table["kid_median"]))
    ax.set_ylim(bottom=min(0.0, ymin))
    fig.tight_layout()
    return fig
