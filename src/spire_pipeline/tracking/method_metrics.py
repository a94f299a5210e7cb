"""One set of metric names for every method, read from the summary tables the pipelines save.

Each reader takes one table and returns ``{method: {metric: value}}``; every method gets the
same names, so MLflow's compare view lines methods up side by side. Readers are defensive:
a missing column or phase leaves its metrics out (the tables' columns evolve).

========================================  =================================================
metric                                    from
========================================  =================================================
``kid_seen_median``, ``kid_seen_worst``   ``kid_summary``: pretrained model, seen clients
``kid_unseen_median``, ``_worst``         ``kid_summary``: adapted model, unseen clients (a
                                          method that does not adapt: its pretrained model)
``kid_seen_after_adaptation_median``      ``kid_summary``: seen clients, after adaptation
``forgetting``, ``_ci_low``, ``_ci_high``  ``forgetting_table``: seen KID after minus before
                                          adapting (``change``, or ``difference``), its CI
``forgetting_worst``                      ``forgetting_table``: ``worst_difference``
``trained_params``, ``trained_pct``       ``adaptation_table`` (or ``unseen_client_table``)
``adapt_seconds``, ``adapt_final_loss``   ``adaptation_table``: median over clients
``pretrain_seconds``, ``_rounds``         ``pretraining_history``: sum over rounds, rounds
``pretrain_final_loss``                   ``pretraining_history``: last round's mean loss
``pretrain_communication_mb``             ``pretraining_history``: bytes sent both ways
``pretrain_val_loss``                     ``pretraining_validation``: median over clients
``tuned_lr``, ``_steps``, ``_epochs``     ``adaptation_choices``: chosen on tuning clients
``tuning_score``                          ``adaptation_choices``: the choice's score
``sweep_kid_*`` (median, best, worst)     ``sweep_table``: KID over the lr x epochs grid
``sweep_spread``, ``_diverged_cells``     ``sweep_table``: worst / best, diverged cells
========================================  =================================================

KID metric names end with the feature extractor (``kid_seen_median.efficientnet_lite0_64px``;
DESIGN: runs with different extractors are never compared by mistake); it comes last so that
MLflow's compare view, which cuts long names, still shows what the number is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

MethodMetrics = dict[str, dict[str, float]]

#: the shared metric names, in the order tables show them (KID names get ``.<extractor>``)
KID_METRICS = (
    "kid_seen_median",
    "kid_seen_worst",
    "kid_unseen_median",
    "kid_unseen_worst",
    "kid_seen_after_adaptation_median",
)
OTHER_METRICS = (
    "forgetting",
    "forgetting_ci_low",
    "forgetting_ci_high",
    "forgetting_worst",
    "trained_params",
    "trained_pct",
    "adapt_seconds",
    "adapt_final_loss",
    "pretrain_seconds",
    "pretrain_rounds",
    "pretrain_final_loss",
    "pretrain_communication_mb",
    "pretrain_val_loss",
    "tuned_lr",
    "tuned_steps",
    "tuned_epochs",
    "tuning_score",
    "sweep_kid_median",
    "sweep_kid_best",
    "sweep_kid_worst",
    "sweep_spread",
    "sweep_diverged_cells",
)


def _has(table: Any, *columns: str) -> bool:
    return isinstance(table, pd.DataFrame) and set(columns) <= set(table.columns)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _put(out: MethodMetrics, method: Any, name: str, value: Any) -> None:
    number = _number(value)
    if number is not None:
        out.setdefault(str(method), {})[name] = number


def kid_suffix(table: pd.DataFrame) -> str:
    """``.<extractor>`` (``""`` when the table names no single extractor)."""
    if _has(table, "extractor"):
        extractors = table["extractor"].dropna().unique()
        if len(extractors) == 1:
            return f".{extractors[0]}"
    return ""


def from_kid_summary(table: pd.DataFrame) -> MethodMetrics:
    """Seen, unseen and after-adaptation KID per method (``phase, role, method, kid_*``)."""
    out: MethodMetrics = {}
    if not _has(table, "phase", "role", "method", "kid_median"):
        return out
    suffix = kid_suffix(table)
    worst = "kid_worst" in table.columns
    adapted = set(table.loc[table["phase"] == "adapted", "method"])
    for row in table.itertuples(index=False):
        if row.phase == "pretrained" and row.role == "seen":
            names = ("kid_seen_median", "kid_seen_worst")
        elif row.role == "unseen" and (
            row.phase == "adapted" or (row.phase == "pretrained" and row.method not in adapted)
        ):
            names = ("kid_unseen_median", "kid_unseen_worst")
        elif row.phase == "after_adaptation" and row.role == "seen":
            names = ("kid_seen_after_adaptation_median", None)
        else:
            continue
        _put(out, row.method, names[0] + suffix, row.kid_median)
        if worst and names[1]:
            _put(out, row.method, names[1] + suffix, row.kid_worst)
    return out


def _columns(table: pd.DataFrame, names: dict[str, str]) -> MethodMetrics:
    """``{method: {metric: value}}`` from the columns ``names`` maps to metric names (one row
    per method); a metric already taken by an earlier column is kept."""
    out: MethodMetrics = {}
    if not _has(table, "method"):
        return out
    for column, name in names.items():
        if column in table.columns:
            for method, value in zip(table["method"], table[column]):
                if name not in out.get(str(method), {}):
                    _put(out, method, name, value)
    return out


def from_forgetting_table(table: pd.DataFrame) -> MethodMetrics:
    """``forgetting`` (seen-client KID after minus before adapting), its CI and worst case."""
    return _columns(
        table,
        {
            "change": "forgetting",
            "difference": "forgetting",
            "ci_low": "forgetting_ci_low",
            "ci_high": "forgetting_ci_high",
            "worst_difference": "forgetting_worst",
        },
    )


def from_adaptation_choices(table: pd.DataFrame) -> MethodMetrics:
    """The hyperparameters chosen for each adaptation method on the tuning clients."""
    return _columns(
        table,
        {
            "lr": "tuned_lr",
            "steps": "tuned_steps",
            "epochs": "tuned_epochs",
            "tuning_score": "tuning_score",
        },
    )


def from_pretraining_validation(table: pd.DataFrame) -> MethodMetrics:
    """Validation DDPM loss per pretraining method (median over seen clients)."""
    out: MethodMetrics = {}
    if _has(table, "method", "val_loss"):
        for method, value in table.groupby("method")["val_loss"].median().items():
            _put(out, method, "pretrain_val_loss", value)
    return out


def from_adaptation_table(table: pd.DataFrame) -> MethodMetrics:
    """Parameters trained, wall time and final loss per adaptation method (median of clients)."""
    out: MethodMetrics = {}
    if not _has(table, "method"):
        return out
    columns = {
        "trained_params": "trained_params",
        "trained_pct": "trained_pct",
        "seconds": "adapt_seconds",
        "final_loss": "adapt_final_loss",
    }
    present = [c for c in columns if c in table.columns]
    medians = table.groupby("method")[present].median(numeric_only=True)
    for method, row in medians.iterrows():
        for column in present:
            _put(out, method, columns[column], row.get(column))
    return out


def from_unseen_client_table(table: pd.DataFrame) -> MethodMetrics:
    """Parameters trained per method (when the adaptation table is not at hand)."""
    return _columns(table, {"trained_params": "trained_params", "trained_pct": "trained_pct"})


def from_pretraining_history(table: pd.DataFrame) -> MethodMetrics:
    """Wall time, rounds, final loss and communication per pretraining method.

    The history has a row per (method, round, client): round-level columns (``loss_mean``,
    ``seconds``) repeat over a round's clients, byte counts are per client.
    """
    out: MethodMetrics = {}
    if not _has(table, "method", "round"):
        return out
    for method, rows in table.groupby("method"):
        rounds = rows.drop_duplicates("round").sort_values("round")
        _put(out, method, "pretrain_rounds", rounds["round"].nunique())
        if "seconds" in rows.columns:
            _put(out, method, "pretrain_seconds", rounds["seconds"].sum())
        if "loss_mean" in rows.columns and len(rounds):
            _put(out, method, "pretrain_final_loss", rounds["loss_mean"].iloc[-1])
        sent = [c for c in ("bytes_up", "bytes_down") if c in rows.columns]
        if sent:
            _put(out, method, "pretrain_communication_mb", rows[sent].to_numpy().sum() / 1e6)
    return out


def from_sweep_table(table: pd.DataFrame) -> MethodMetrics:
    """KID over the robustness grid per method (``spire.sweep.sweep_summary``)."""
    out: MethodMetrics = {}
    if not _has(table, "method", "lr", "epochs", "kid_mean"):
        return out
    from spire_pipeline.spire.sweep import sweep_summary  # the run has loaded torch already

    suffix = kid_suffix(table)
    for row in sweep_summary(table).to_dict("records"):
        for column in ("kid_median", "kid_best", "kid_worst"):
            _put(out, row["method"], f"sweep_{column}{suffix}", row.get(column))
        _put(out, row["method"], "sweep_spread", row.get("spread"))
        _put(out, row["method"], "sweep_diverged_cells", row.get("diverged_cells"))
    return out


#: catalog dataset -> reader; the phase a method takes part in, when a table names it
READERS: dict[str, tuple[Callable[[pd.DataFrame], MethodMetrics], str | None]] = {
    "pretraining_history": (from_pretraining_history, "pretraining"),
    "adaptation_table": (from_adaptation_table, "adaptation"),
    "kid_summary": (from_kid_summary, None),
    "unseen_client_table": (from_unseen_client_table, "adaptation"),
    "forgetting_table": (from_forgetting_table, None),
    "adaptation_choices": (from_adaptation_choices, "adaptation"),
    "pretraining_validation": (from_pretraining_validation, "pretraining"),
    "sweep_table": (from_sweep_table, "robustness sweep"),
}


def short_name(name: str) -> str:
    """The metric's name without its extractor (``kid_seen_median.<extractor>``)."""
    return name.split(".", 1)[0]


def metric_order(name: str) -> tuple[int, str]:
    """Sort key: the shared metrics in table order, then anything else by name."""
    short = short_name(name)
    order = [*KID_METRICS, *OTHER_METRICS]
    return (order.index(short) if short in order else len(order), name)
