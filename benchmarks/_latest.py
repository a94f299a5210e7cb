"""The newest outputs of the main job, for the benchmark scripts (run `make run` first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spire_pipeline.spire.partition import ClientSplit, splits_from_partitions


def newest(folder: str) -> Path:
    """The newest version folder of a versioned output."""
    versions = sorted(p for p in Path(folder).iterdir() if p.is_dir() and p.name[0] != ".")
    if not versions:
        raise SystemExit(f"nothing in {folder}: run `make run` (the main job) first")
    return versions[-1]


def client_splits(role: str) -> list[ClientSplit]:
    """The newest client splits of one role (``seen`` or ``unseen``)."""
    folder = newest("data/05_model_input/client_splits")
    parts = {p.stem: dict(np.load(p)) for p in folder.glob("*.npz")}
    return [s for s in splits_from_partitions(parts).values() if s.role == role]
