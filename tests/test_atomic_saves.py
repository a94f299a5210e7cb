"""Versioned outputs are written atomically (issue 16, item 3): a save writes a hidden
temporary name and renames it, so a save that dies half-way leaves no file that a load would
take for the newest version."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from kedro.io import AbstractVersionedDataset, DataCatalog, Version
from kedro_datasets.pandas import CSVDataset

from spire_pipeline.atomic_saves import AtomicSaveHook, make_atomic
from spire_pipeline.datasets import FigureDataset, NpzDataset


class Died(BaseException):
    """The process died in the middle of a save (like SIGKILL: nothing after it runs)."""


class HalfWriter(AbstractVersionedDataset[bytes, bytes]):
    """Writes half of its bytes, then dies (``die``), or all of them."""

    def __init__(self, *, filepath: str, version: Version | None = None) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version)
        self.die = False

    def load(self) -> bytes:
        return Path(str(self._get_load_path())).read_bytes()

    def save(self, data: bytes) -> None:
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            if self.die:
                raise Died
            fh.write(data[len(data) // 2 :])

    def _exists(self) -> bool:
        return Path(str(self._get_load_path())).exists()

    def _describe(self) -> dict:
        return {"filepath": str(self._filepath)}


def writer(folder: Path, version: str | None = None) -> HalfWriter:
    return HalfWriter(filepath=str(folder / "out.bin"), version=Version(None, version))


def test_a_save_that_dies_leaves_no_version(tmp_path) -> None:
    good = writer(tmp_path, "2026-01-01T00.00.00.000Z")
    assert make_atomic(good) and not make_atomic(good)  # once is enough
    good.save(b"complete")
    dying = writer(tmp_path, "2026-01-02T00.00.00.000Z")
    make_atomic(dying)
    dying.die = True
    with pytest.raises(Died):
        dying.save(b"never complete")
    # the newest version a load finds is the complete one; the partial file is hidden
    assert writer(tmp_path).load() == b"complete"
    partial = list((tmp_path / "out.bin" / "2026-01-02T00.00.00.000Z").iterdir())
    assert [p.name.startswith(".out.partial-") for p in partial] == [True]


def test_without_atomic_saves_the_half_file_would_be_read(tmp_path) -> None:
    """The failure the hook prevents (kedro loads the newest version whose file exists)."""
    writer(tmp_path, "2026-01-01T00.00.00.000Z").save(b"complete")
    dying = writer(tmp_path, "2026-01-02T00.00.00.000Z")
    dying.die = True
    with pytest.raises(Died):
        dying.save(b"never complete")
    assert writer(tmp_path).load() == b"never c"  # half of it


def test_the_hook_makes_catalog_saves_atomic(tmp_path, monkeypatch) -> None:
    csv = CSVDataset(filepath=str(tmp_path / "t.csv"), version=Version(None, None))
    npz = NpzDataset(filepath=str(tmp_path / "a.npz"), version=Version(None, None))
    # a subclass of a wrapped dataset: kedro wraps its save twice
    fig = FigureDataset(filepath=str(tmp_path / "f.png"), version=Version(None, None))
    plain = CSVDataset(filepath=str(tmp_path / "plain.csv"))
    catalog = DataCatalog({"t": csv, "a": npz, "f": fig, "plain": plain})
    hook = AtomicSaveHook()
    hook.after_catalog_created(catalog)
    renames = []
    import os

    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr("spire_pipeline.atomic_saves.os.replace", replace)
    frame = pd.DataFrame({"x": [1, 2]})
    figure = plt.figure()
    saves = [("t", frame), ("a", {"x": frame["x"].to_numpy()}), ("f", figure), ("plain", frame)]
    for name, data in saves:
        hook.before_dataset_saved(name, data, None)
        catalog.save(name, data)
    assert [dst for _, dst in renames] == ["t.csv", "a.npz", "f.png"]  # unversioned: as before
    assert catalog.load("f")[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(src.startswith(".") and ".partial-" in src for src, _ in renames)
    pd.testing.assert_frame_equal(catalog.load("t"), frame)
    assert catalog.load("a")["x"].tolist() == [1, 2]
    leftovers = [p for p in tmp_path.rglob("*") if ".partial" in p.name]
    assert leftovers == []
