"""A pretrained or adapted :class:`~spire_pipeline.spire.bundle.ModelBundle` as safetensors."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError, Version
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spire_pipeline.spire.bundle import ModelBundle


class ModelBundleDataset(AbstractVersionedDataset[ModelBundle, ModelBundle]):
    """``ModelBundle`` <-> one ``.safetensors`` file (tensors + JSON metadata), local disk."""

    def __init__(
        self, *, filepath: str, version: Version | None = None, metadata: dict | None = None
    ) -> None:
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(filepath), version=version)

    def load(self) -> ModelBundle:
        path = Path(str(self._get_load_path()))
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            return ModelBundle.from_tensors(load_file(str(path)), meta)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable model bundle ({exc})") from exc

    def save(self, data: ModelBundle) -> None:
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = data.to_tensors()
        save_file(tensors, str(path), metadata=meta)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).exists()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
