"""Kedro datasets of this project (use them in the catalog as ``spire_pipeline.datasets.<Name>``).

Imported lazily, so that a catalog that only reads images does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ClientImagesDataset": "client_images_dataset",
    "DiffusersExportDataset": "diffusers_export_dataset",
    "FigureDataset": "figure_dataset",
    "IDXImageDataset": "image_datasets",
    "ModelBundleDataset": "model_bundle_dataset",
    "NpzDataset": "npz_dataset",
    "NpzImageDataset": "image_datasets",
    "OptionalDataset": "optional_dataset",
    "PersonalEmbeddingsDataset": "personal_embeddings",
    "PngImageDataset": "png_dataset",
    "ReportDataset": "report_dataset",
    "VersionedPartitionedDataset": "versioned_partitions",
}

__all__ = [
    "ClientImagesDataset",
    "DiffusersExportDataset",
    "FigureDataset",
    "IDXImageDataset",
    "ModelBundleDataset",
    "NpzDataset",
    "NpzImageDataset",
    "OptionalDataset",
    "PersonalEmbeddingsDataset",
    "PngImageDataset",
    "ReportDataset",
    "VersionedPartitionedDataset",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
