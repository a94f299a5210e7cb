"""Versioned outputs written atomically: a save writes a hidden temporary name, then renames it.

Kedro saves a versioned dataset to ``<filepath>/<version>/<name>`` and loads the newest version
whose file exists (it globs ``<filepath>/*/<name>``). A run killed while a save is writing
would leave a partial file there, and a later run, or a later pipeline started on its own, would
load it as the newest complete version. :class:`AtomicSaveHook` makes every versioned dataset on
the local disk write ``<filepath>/<version>/.<stem>.partial-<pid><suffix>`` and rename it to
``<name>`` once the save has returned: the name a load looks for appears complete or not at all
(a partial file left by a kill matches no load pattern and is never read).

The project's folder datasets (``VersionedPartitionedDataset``, ``ReportDataset``,
``PersonalEmbeddingsDataset``) already write a hidden folder or file and rename it.
"""

from __future__ import annotations

import os
import types
from pathlib import PurePosixPath
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

_LOCAL = ("file", "local")
#: the file of kedro's save wrappers
_KEDRO = AbstractVersionedDataset._save_wrapper.__code__.co_filename


def partial_path(final: PurePosixPath) -> PurePosixPath:
    """The temporary name a save writes before it is renamed to ``final`` (same folder, same
    suffix, so that a writer that reads the format from the suffix still does)."""
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


def _unwrapped(save: Any) -> Any:
    """The dataset's own ``save`` under kedro's wrappers (a subclass of a wrapped dataset, such
    as ``FigureDataset``, is wrapped twice); ``None`` if ``save`` is not wrapped."""
    raw = None
    while getattr(save, "__wrapped__", None) is not None and save.__code__.co_filename == _KEDRO:
        raw = save = save.__wrapped__
    return raw


def make_atomic(dataset: Any) -> bool:
    """Make ``dataset``'s saves atomic (temporary name, then rename); ``False`` when it is not a
    versioned dataset on the local disk (left as it is) or already atomic."""
    cls = type(dataset)
    raw = _unwrapped(cls.save)
    if (
        not isinstance(dataset, AbstractVersionedDataset)
        or not getattr(dataset, "_version", None)
        or getattr(dataset, "_protocol", "file") not in _LOCAL
        or raw is None
        or getattr(dataset, "_atomic_saves", False)
    ):
        return False

    def save_atomically(self, data: Any) -> None:
        final = cls._get_save_path(self)  # raises if this version exists
        tmp = partial_path(final)
        self._get_save_path = lambda: tmp  # what the dataset's own save writes to
        try:
            raw(self, data)
            os.replace(str(tmp), str(final))
        finally:
            del self._get_save_path

    dataset.save = types.MethodType(cls._save_wrapper(save_atomically), dataset)
    dataset._atomic_saves = True
    return True


class AtomicSaveHook:
    """Every versioned local dataset saves to a temporary name and renames it (see module)."""

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is not None and dataset_name in self._catalog:
            make_atomic(self._catalog.get(dataset_name))
