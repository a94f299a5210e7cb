"""Shared by the personalisation benchmarks: the project's catalog and parameters (as
``kedro run --env`` merges them) and a user's folder of PNG files made from Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from PIL import Image


def project_config(env: str | None) -> tuple[DataCatalog, dict]:
    """The catalog and parameters of ``env`` over ``conf/base``."""
    conf = OmegaConfigLoader("conf", base_env="base", default_run_env=env or "local")
    return DataCatalog.from_config(conf["catalog"]), conf["parameters"]


def two_class_folder(
    images: np.ndarray, labels: np.ndarray, classes: tuple[int, int], n: int, folder: Path
) -> Path:
    """The first ``n / 2`` images of each of ``classes``, written as PNG files into ``folder``."""
    idx = np.concatenate([np.flatnonzero(labels == c)[: n // 2] for c in classes])
    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(idx):
        Image.fromarray(images[i]).save(folder / f"img_{k:03d}.png")
    return folder
