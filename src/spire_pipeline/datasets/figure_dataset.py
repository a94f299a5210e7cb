"""A matplotlib figure saved as an image file that loads back as that file's bytes.

Kedro's ``MatplotlibDataset`` cannot be loaded, so no node can depend on a figure; this one can
(the report embeds the figures of its run, and the notebook shows them).
"""

from __future__ import annotations

from kedro.io.core import get_filepath_str
from kedro_datasets.matplotlib import MatplotlibDataset


class FigureDataset(MatplotlibDataset):
    """``MatplotlibDataset`` (same arguments, same files) whose ``load`` returns the image bytes
    of the newest version (or of the pinned ``load`` version)."""

    def load(self) -> bytes:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, mode="rb") as f:
            return f.read()
