"""Raw labelled image sets: IDX files (MNIST format) or one ``.npz``; both load the same dict.

A loaded image set is ``{"images": uint8 (N,H,W[,C]), "labels": int64 (N,)}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from spire_pipeline.spire.idx import IDXFormatError, idx_shape, read_idx

HOW_TO_GET = (
    "Run `make data` (or `python -m spire_pipeline.data_setup`) to obtain Fashion-MNIST, "
    "or point the catalog entry at your own IDX or .npz files."
)


def one_image_shape(shape: tuple[int, ...], source: str) -> tuple[int, int, int]:
    """(height, width, channels) of the images of an (N,H,W[,C]) array shape."""
    if len(shape) not in (3, 4):
        raise DatasetError(f"{source}: images must have shape (N,H,W) or (N,H,W,C), got {shape}")
    return (int(shape[1]), int(shape[2]), int(shape[3]) if len(shape) == 4 else 1)


def check_image_set(images: np.ndarray, labels: np.ndarray, source: str) -> dict[str, np.ndarray]:
    """Validate an image set's arrays and return it as the project's dict."""
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DatasetError(
            f"{source}: images must have shape (N,H,W) or (N,H,W,C) with C in (1, 3), "
            f"got {images.shape}"
        )
    if images.dtype != np.uint8:
        raise DatasetError(f"{source}: images must be uint8, got {images.dtype}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{source}: labels must have shape ({len(images)},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DatasetError(f"{source}: labels must be non-negative integers")
    return {"images": images, "labels": labels.astype(np.int64)}


class IDXImageDataset(AbstractDataset[None, dict[str, np.ndarray]]):
    """Images and labels from a pair of IDX files (gzip-compressed or not), read-only.

    Example::

        raw_train:
          type: spire_pipeline.datasets.IDXImageDataset
          images_filepath: data/01_raw/fashion-mnist/train-images-idx3-ubyte.gz
          labels_filepath: data/01_raw/fashion-mnist/train-labels-idx1-ubyte.gz
    """

    def __init__(
        self, *, images_filepath: str, labels_filepath: str, metadata: dict | None = None
    ) -> None:
        self._images = Path(images_filepath)
        self._labels = Path(labels_filepath)
        self.metadata = metadata

    def _read(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise DatasetError(f"{path}: file not found. {HOW_TO_GET}")
        try:
            return read_idx(path)
        except IDXFormatError as exc:
            raise DatasetError(f"{exc}. The file is corrupt: delete it. {HOW_TO_GET}") from exc

    def load(self) -> dict[str, np.ndarray]:
        images, labels = self._read(self._images), self._read(self._labels)
        return check_image_set(images, labels, f"{self._images} + {self._labels}")

    def peek(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The labels and one image's (height, width, channels), without reading the images
        (what parameter checks need before a run)."""
        if not self._images.is_file():
            raise DatasetError(f"{self._images}: file not found. {HOW_TO_GET}")
        try:
            shape = idx_shape(self._images)
        except IDXFormatError as exc:
            raise DatasetError(f"{exc}. The file is corrupt: delete it. {HOW_TO_GET}") from exc
        return self._read(self._labels), one_image_shape(shape, str(self._images))

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return self._images.is_file() and self._labels.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"images_filepath": str(self._images), "labels_filepath": str(self._labels)}


class NpzImageDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """Images and labels from one ``.npz`` holding ``images`` (N,H,W[,C] uint8) and ``labels``.

    Example::

        raw_train:
          type: spire_pipeline.datasets.NpzImageDataset
          filepath: data/01_raw/my_images.npz
    """

    def __init__(
        self,
        *,
        filepath: str,
        images_key: str = "images",
        labels_key: str = "labels",
        metadata: dict | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._keys = (images_key, labels_key)
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        path = self._filepath
        if not path.is_file():
            raise DatasetError(f"{path}: file not found. {HOW_TO_GET}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in self._keys if k not in npz.files]
                if missing:
                    raise DatasetError(
                        f"{path}: missing array(s) {missing}; it holds {sorted(npz.files)}"
                    )
                images, labels = (npz[k] for k in self._keys)
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable .npz file ({exc}). {HOW_TO_GET}") from exc
        return check_image_set(images, labels, str(path))

    def peek(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The labels and one image's (height, width, channels)."""
        data = self.load()
        return data["labels"], one_image_shape(data["images"].shape, str(self._filepath))

    def save(self, data: dict[str, np.ndarray]) -> None:
        checked = check_image_set(data["images"], data["labels"], str(self._filepath))
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            self._filepath, **{self._keys[0]: checked["images"], self._keys[1]: checked["labels"]}
        )

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "keys": self._keys}
