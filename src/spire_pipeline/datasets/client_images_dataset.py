"""A new client's own images: a folder of PNG/JPEG files or an ``.npz`` (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from spire_pipeline.spire.client_images import ImageSet, read_images


class ClientImagesDataset(AbstractDataset[None, ImageSet]):
    """Loads :class:`~spire_pipeline.spire.client_images.ImageSet` (the images as they are;
    the ``personalize`` pipeline fits them to the backbone).

    Example (the path can come from ``--params personalize.images=...``)::

        personal_images:
          type: spire_pipeline.datasets.ClientImagesDataset
          path: ${runtime_params:personalize.images, data/01_raw/personal_images}
    """

    def __init__(self, *, path: str, metadata: dict | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ImageSet:
        return read_images(self._path)

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
