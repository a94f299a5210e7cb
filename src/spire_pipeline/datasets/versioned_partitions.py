"""A ``PartitionedDataset`` whose whole folder is versioned: ``<path>/<version>/<partition>``.

Kedro's own ``PartitionedDataset`` versions each partition file separately, so a run with
fewer partitions would still load stale ones; here every save writes a complete new folder
and a load reads the newest complete folder (or the pinned ``load`` version).
"""

from __future__ import annotations

import shutil
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
        if not base.is_dir():
            return []
        names = (p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        return sorted(names, reverse=True)

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
        if self._version is None:
            super().save(data)
            return
        version = self._version.save or generate_timestamp()
        final = Path(self._base_path) / version
        if final.exists():
            raise DatasetError(f"Save path '{final}' must not exist if versioning is enabled")
        # Write into a hidden folder and rename it when complete: a save that fails half-way
        # leaves no version folder behind, so a load never reads a partial set of partitions.
        partial = Path(self._base_path) / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self._use(partial.name)
        super().save(data)
        partial.rename(final)
        self._use(version)

    def _exists(self) -> bool:
        if self._version is None:
            return super()._exists()
        return bool(self._versions())

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "version": self._version}
