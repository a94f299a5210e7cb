"""Personal embeddings, one small safetensors file per client name, each versioned on its own.

Layout: ``<path>/<name>/<version>/<name>.safetensors`` (a
:class:`~spire_pipeline.spire.bundle.ModelBundle` holding one embedding). Saving writes the
names given under the run's version; loading returns every name's newest version, so clients
personalised in different runs are all found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError, Version
from kedro.io.core import generate_timestamp
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spire_pipeline.spire.bundle import ModelBundle


class PersonalEmbeddingsDataset(AbstractDataset[dict[str, ModelBundle], dict[str, ModelBundle]]):
    """``{name: ModelBundle}`` <-> one versioned ``.safetensors`` file per name (local disk).

    Use with ``versioned: true``; a pinned load version applies to every name that has it.
    """

    def __init__(
        self, *, path: str, version: Version | None = None, metadata: dict | None = None
    ) -> None:
        self._path = Path(path)
        self._version = version
        self.metadata = metadata

    def file(self, name: str, version: str) -> Path:
        """Where ``name``'s embedding of ``version`` lives."""
        return self._path / name / version / f"{name}.safetensors"

    def versions(self, name: str) -> list[str]:
        """``name``'s saved versions, newest first."""
        folder = self._path / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / f"{name}.safetensors").is_file()]
        return sorted(found, reverse=True)

    def names(self) -> list[str]:
        if not self._path.is_dir():
            return []
        return sorted(p.name for p in self._path.iterdir() if p.is_dir() and self.versions(p.name))

    def load(self) -> dict[str, ModelBundle]:
        pinned = self._version.load if self._version else None
        out = {}
        for name in self.names():
            versions = self.versions(name)
            version = pinned if pinned in versions else versions[0]
            out[name] = self._read(self.file(name, version))
        return out

    @staticmethod
    def _read(path: Path) -> ModelBundle:
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            return ModelBundle.from_tensors(load_file(str(path)), meta)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable embedding file ({exc})") from exc

    def save(self, data: dict[str, ModelBundle]) -> None:
        version = (self._version.save if self._version else None) or generate_timestamp()
        for name, bundle in data.items():
            path = self.file(name, version)
            if path.exists():
                raise DatasetError(f"{path} exists: a version is written once")
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors, meta = bundle.to_tensors()
            partial = path.with_name(f".{path.name}.partial")
            save_file(tensors, str(partial), metadata=meta)
            os.replace(partial, path)

    def _exists(self) -> bool:
        return bool(self.names())

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "version": self._version}
