"""A report folder: ``report.md`` and the files it links (figures), one folder per version and
a copy of the newest at a stable path.

Saved data is ``{relative path: text or bytes}``. With ``versioned: true`` each save writes
``<path>/<version>/`` (atomically: a failed save leaves no version behind) and then replaces
``latest`` (e.g. ``data/08_reporting/latest``) with a copy, so the newest report and its
figures are always at one place whose relative links work.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError, Version
from kedro.io.core import generate_timestamp

Files = dict[str, str | bytes]


class ReportDataset(AbstractDataset[Files, str]):
    """Local filesystem only. ``load`` returns the main file's text (newest version)."""

    def __init__(
        self,
        *,
        path: str,
        latest: str | None = None,
        main_file: str = "report.md",
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._base = Path(path)
        self._latest = Path(latest) if latest else None
        self._main = main_file
        self._version = version
        self.metadata = metadata
        self._path = str(self._base)  # where the last save went (read by the MLflow hook)

    @property
    def latest_file(self) -> Path | None:
        """The stable path of the newest report's main file (``None`` without ``latest``)."""
        return self._latest / self._main if self._latest else None

    @property
    def saved_file(self) -> Path:
        """The main file of the last save (or of the base folder before any save)."""
        return Path(self._path) / self._main

    def _versions(self) -> list[str]:
        if not self._base.is_dir():
            return []
        names = (p.name for p in self._base.iterdir() if p.is_dir() and p.name[0] != ".")
        return sorted(names, reverse=True)

    def _folder_to_load(self) -> Path:
        if self._version is None:
            return self._base
        version = self._version.load or next(iter(self._versions()), None)
        if version is None:
            raise DatasetError(f"No versions of the report found in '{self._base}'")
        return self._base / version

    def load(self) -> str:
        return (self._folder_to_load() / self._main).read_text(encoding="utf-8")

    def save(self, data: Files) -> None:
        if self._main not in data:
            raise DatasetError(f"a report needs its main file '{self._main}'; got {sorted(data)}")
        if self._version is None:
            target = self._base
        else:
            target = self._base / (self._version.save or generate_timestamp())
            if target.exists():
                raise DatasetError(f"Save path '{target}' must not exist if versioning is enabled")
        _write_folder(target, data)
        self._path = str(target)
        if self._latest is not None:
            _write_folder(self._latest, data)

    def _exists(self) -> bool:
        if self._version is None:
            return (self._base / self._main).is_file()
        return bool(self._versions())

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._base), "latest": str(self._latest), "version": self._version}


def _write_folder(target: Path, files: Files) -> None:
    """Write ``files`` into a hidden sibling folder, then put it in ``target``'s place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    for rel, content in files.items():
        path = partial / rel
        if not path.resolve().is_relative_to(partial.resolve()):
            raise DatasetError(f"report file '{rel}' would land outside the report folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
