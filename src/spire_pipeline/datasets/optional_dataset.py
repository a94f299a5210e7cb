"""Any dataset, made optional: loads ``None`` (or another default) while it holds no data."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError


class OptionalDataset(AbstractDataset[Any, Any]):
    """Wraps ``dataset`` (a catalog entry's config); ``load`` returns ``default`` when the
    wrapped dataset does not exist yet, e.g. a table that another pipeline writes later.

    Example::

        personalize_choices:
          type: spire_pipeline.datasets.OptionalDataset
          dataset:
            type: pandas.CSVDataset
            filepath: data/06_models/adaptation_choices.csv
            versioned: true
    """

    def __init__(
        self, *, dataset: dict[str, Any], default: Any = None, metadata: dict | None = None
    ) -> None:
        self._inner = AbstractDataset.from_config("optional", dataset)
        self._default = default
        self.metadata = metadata

    def load(self) -> Any:
        try:
            present = self._inner.exists()
        except DatasetError:
            present = False
        return self._inner.load() if present else self._default

    def save(self, data: Any) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._inner._describe(), "default": self._default}
