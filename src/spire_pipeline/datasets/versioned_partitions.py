"""A ``PartitionedDataset`` whose whole folder is versioned: ``<path>/<version>/<partition>``.

Kedro's own ``PartitionedDataset`` versions each partition file separately, so a run with
fewer partitions would still load stale ones; here every save writes a complete new folder
and a load reads the newest complete folder (or the pinned ``load`` version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import DatasetError, Version
from kedro.io.core import generate_timestamp
from kedro_datasets.partitions import PartitionedDataset


class VersionedPartitionedDataset(PartitionedDataset):
    """Use with ``versioned: true`` in the catalog; local filesystem only."""

    def __init__(self, *, path: str, version: Version | None = None, **kwargs: Any) -> None:
        self._base_path = path.rstrip("/")
        self._version = version
        super().__init__(path=path, **kwargs)

    def _versions(self) -> list[str]:
        base = Path(self._base_path)
        return sorted((p.name for p in base.iterdir() if p.is_dir()), reverse=True) if base.is_dir() else []

    def _use(self, version: str) -> None:
        self._path = f"{self._base_path}/{version}"
        self._invalidate_caches()

    def load(self):
        if self._version is not None:
            load = self._version.load or next(iter(self._versions()), None)
            if load is None:
                raise DatasetError(f"No versions found in '{self._base_path}'")
            self._use(load)
        return super().load()

    def save(self, data: dict[str, Any]) -> None:
        if self._version is not None:
            self._use(self._version.save or generate_timestamp())
            if Path(self._path).exists():
                raise DatasetError(f"Save path '{self._path}' must not exist if versioning is enabled")
        super().save(data)

    def _exists(self) -> bool:
        if self._version is None:
            return super()._exists()
        return bool(self._versions())

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "version": self._version}
