"""A model exported in diffusers' format: one folder per version (see ``spire/export.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError, Version

from spire_pipeline.spire.export import DiffusersExport, load_export, save_export


class DiffusersExportDataset(AbstractVersionedDataset[DiffusersExport, DiffusersExport]):
    """:class:`~spire_pipeline.spire.export.DiffusersExport` <-> a folder (``unet/``,
    ``scheduler/``, ``sampler/``, ``client_embeddings.safetensors``, ``spire_export.json``)."""

    def __init__(
        self, *, filepath: str, version: Version | None = None, metadata: dict | None = None
    ) -> None:
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(filepath), version=version)

    def load(self) -> DiffusersExport:
        return load_export(Path(str(self._get_load_path())))

    def save(self, data: DiffusersExport) -> None:
        folder = Path(str(self._get_save_path()))
        # written under a hidden name and renamed when complete: never read half-written
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_export(data, partial)
        partial.rename(folder)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_dir()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
