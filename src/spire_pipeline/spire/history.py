"""Pretraining history (one record per round, as :func:`~.federated.pretrain` returns it) as
table rows, per-round metric series and a one-line summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: per-round fields copied into every row of the history table
ROUND_FIELDS = ("method", "round", "loss_mean", "bytes_down", "bytes_up", "seconds")
#: per-round fields logged as metric series (``<method>.<field>``)
METRIC_FIELDS = ("loss_mean", "bytes_down", "bytes_up", "seconds")

Metrics = dict[str, list[dict[str, float]]]


def history_rows(history: Sequence[dict]) -> list[dict]:
    """One row per (round, client that reported a loss)."""
    rows = []
    for rec in history:
        for client, loss in rec["client_losses"].items():
            rows.append(
                {
                    **{k: rec[k] for k in ROUND_FIELDS},
                    "client": client,
                    "client_loss": loss,
                    "num_clients": len(rec["clients"]),
                    "failed": ",".join(rec["failed"]),
                    "missing": ",".join(rec.get("missing", [])),
                }
            )
    return rows


def history_metrics(method: str, history: Sequence[dict]) -> Metrics:
    """Metric series ``{name: [{"value", "step"}, ...]}``, the round as step: the round's
    fields, each client's loss (``<method>.loss.<client>``), the number of clients left out
    (``<method>.clients_failed``, ``.clients_missing``) and, for each client left out,
    ``<method>.failed.<client>`` or ``<method>.missing.<client>`` = 1."""
    metrics: Metrics = {}
    for rec in history:
        step = rec["round"]
        for key in METRIC_FIELDS:
            metrics.setdefault(f"{method}.{key}", []).append(
                {"value": float(rec[key]), "step": step}
            )
        for client, loss in rec["client_losses"].items():
            metrics.setdefault(f"{method}.loss.{client}", []).append(
                {"value": float(loss), "step": step}
            )
        for key in ("failed", "missing"):
            left_out = rec.get(key, [])
            metrics.setdefault(f"{method}.clients_{key}", []).append(
                {"value": float(len(left_out)), "step": step}
            )
            for client in left_out:
                metrics.setdefault(f"{method}.{key}.{client}", []).append(
                    {"value": 1.0, "step": step}
                )
    return metrics


def history_summary(history: Sequence[dict]) -> tuple[float, float]:
    """The last round's mean loss and the mean seconds per round (NaN without rounds)."""
    if not history:
        return float("nan"), float("nan")
    return float(history[-1]["loss_mean"]), float(np.mean([h["seconds"] for h in history]))
