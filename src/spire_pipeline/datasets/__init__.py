"""Kedro datasets of this project (use them in the catalog as ``spire_pipeline.datasets.<Name>``)."""

from spire_pipeline.datasets.image_datasets import IDXImageDataset, NpzImageDataset
from spire_pipeline.datasets.npz_dataset import NpzDataset
from spire_pipeline.datasets.versioned_partitions import VersionedPartitionedDataset

__all__ = ["IDXImageDataset", "NpzDataset", "NpzImageDataset", "VersionedPartitionedDataset"]
