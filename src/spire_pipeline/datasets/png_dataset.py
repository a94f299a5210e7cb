"""One uint8 image array as a PNG file (lossless, so the same pixels give the same bytes)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractVersionedDataset, DatasetError, Version


class PngImageDataset(AbstractVersionedDataset[np.ndarray, np.ndarray]):
    """uint8 (H,W) or (H,W,3) array <-> ``.png`` on the local disk (versionable)."""

    def __init__(
        self, *, filepath: str, version: Version | None = None, metadata: dict | None = None
    ) -> None:
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(filepath), version=version)

    def load(self) -> np.ndarray:
        from PIL import Image

        path = Path(str(self._get_load_path()))
        with Image.open(path) as im:
            return np.asarray(im)

    def save(self, data: np.ndarray) -> None:
        from PIL import Image

        arr = np.asarray(data)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise DatasetError(f"PNG needs a uint8 (H,W[,3]) array, got {arr.dtype} {arr.shape}")
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(
            partial, format="PNG"
        )
        os.replace(partial, path)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_file()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
