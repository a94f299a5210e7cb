"""Nodes of ``data_partitioning``: thin wrappers over :mod:`spire_pipeline.spire.partition`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spire_pipeline.spire.config import DatasetConfig, PartitionConfig
from spire_pipeline.spire.partition import (
    partition,
    partition_statistics,
    partition_table,
)
from spire_pipeline.spire.plots import partition_heatmap
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)


def partition_clients(
    raw_train: dict[str, np.ndarray], raw_test: dict[str, np.ndarray], params: dict[str, Any]
) -> tuple[dict[str, dict[str, np.ndarray]], pd.DataFrame]:
    """Pool the raw train and test sets and split them into clients."""
    cfg = validate_params(PartitionConfig, params, "data_partitioning")
    images = np.concatenate([raw_train["images"], raw_test["images"]])
    labels = np.concatenate([raw_train["labels"], raw_test["labels"]])
    splits = partition(images, labels, cfg)
    table = partition_table(splits, num_classes=int(labels.max()) + 1)
    log.info("Partitioned %d images into %d clients:\n%s", len(labels), len(splits), table)
    return {s.client: s.to_arrays() for s in splits}, table


def partition_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Partition statistics in kedro-mlflow's metrics format."""
    stats = partition_statistics(table)
    log.info("Partition statistics: %s", stats)
    return {k: {"value": v, "step": 0} for k, v in stats.items()}


def plot_partition_heatmap(table: pd.DataFrame, dataset: dict[str, Any]) -> Figure:
    """Heat map of images per client and class (classes by name when the dataset names them)."""
    return partition_heatmap(table, validate_params(DatasetConfig, dataset, "dataset").class_names)
