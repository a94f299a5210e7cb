"""Helpers for what a ``PartitionedDataset`` loads (a dict of loader callables)."""

from __future__ import annotations

from typing import Any


def resolve(partitions: dict[str, Any]) -> dict[str, Any]:
    """Call each partition's loader (values that are already data pass through), sorted by id."""
    return {k: v() if callable(v) else v for k, v in sorted(partitions.items())}
