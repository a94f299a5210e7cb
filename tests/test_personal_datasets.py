"""The datasets of personalize, generate and diffusers_export (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError, Version

from spire_pipeline.datasets import (
    ClientImagesDataset,
    DiffusersExportDataset,
    OptionalDataset,
    PersonalEmbeddingsDataset,
    PngImageDataset,
)
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.client_images import ImageInputError
from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig
from spire_pipeline.spire.export import to_diffusers
from spire_pipeline.spire.model import build_backbone, state_of

BACKBONE = BackboneConfig(block_out_channels=[8, 16], norm_num_groups=4, image_size=16)


def embedding(name: str, value: float) -> ModelBundle:
    return ModelBundle(
        "spire",
        BACKBONE,
        DiffusionConfig(),
        embeddings={name: torch.full((32,), value)},
        info={"base": "spire"},
    )


def test_personal_embeddings_keep_every_name_and_load_the_newest(tmp_path) -> None:
    def store(version: str | None = None) -> PersonalEmbeddingsDataset:
        return PersonalEmbeddingsDataset(path=str(tmp_path), version=Version(None, version))

    assert store().load() == {} and not store().exists()
    store("2026-01-01T00.00.00.000Z").save({"alice": embedding("alice", 1.0)})
    store("2026-01-02T00.00.00.000Z").save({"bob": embedding("bob", 2.0)})
    store("2026-01-03T00.00.00.000Z").save({"alice": embedding("alice", 3.0)})
    loaded = store().load()
    assert sorted(loaded) == ["alice", "bob"]
    assert loaded["alice"].embeddings["alice"][0] == 3.0  # the newest of alice
    assert loaded["bob"].embeddings["bob"][0] == 2.0
    pinned = PersonalEmbeddingsDataset(
        path=str(tmp_path), version=Version("2026-01-01T00.00.00.000Z", None)
    ).load()
    assert pinned["alice"].embeddings["alice"][0] == 1.0
    assert (tmp_path / "alice/2026-01-01T00.00.00.000Z/alice.safetensors").is_file()
    with pytest.raises(DatasetError, match="a version is written once"):
        store("2026-01-02T00.00.00.000Z").save({"bob": embedding("bob", 5.0)})
    assert not list(tmp_path.rglob("*.partial"))


def test_optional_dataset_loads_a_default_until_there_is_data(tmp_path) -> None:
    config = {"type": "pandas.CSVDataset", "filepath": str(tmp_path / "t.csv"), "versioned": True}
    assert OptionalDataset(dataset=config).load() is None
    assert OptionalDataset(dataset=config, default={}).load() == {}
    folder = tmp_path / "t.csv" / "2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    pd.DataFrame({"method": ["spire"], "lr": [0.1]}).to_csv(folder / "t.csv", index=False)
    assert OptionalDataset(dataset=config).load()["lr"].tolist() == [0.1]


def test_png_dataset_round_trips_pixels_and_bytes(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    a, b = (PngImageDataset(filepath=str(tmp_path / f"{k}.png")) for k in "ab")
    a.save(img)
    b.save(img)
    np.testing.assert_array_equal(a.load(), img)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with pytest.raises(DatasetError, match="uint8"):
        a.save(img.astype(np.float32))


def test_client_images_dataset_reads_and_names_the_culprit(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 8, 8), np.uint8))
    assert len(ClientImagesDataset(path=str(tmp_path / "x.npz")).load()) == 3
    with pytest.raises(DatasetError) as err:  # Kedro wraps it; the CLI prints the cause
        ClientImagesDataset(path=str(tmp_path / "none")).load()
    assert isinstance(err.value.__cause__, ImageInputError)
    assert str(err.value.__cause__).endswith("none: no such folder or .npz file")


def test_diffusers_export_dataset_writes_a_complete_folder(tmp_path) -> None:
    model = build_backbone(BACKBONE, seed=0)
    bundle = ModelBundle(
        "spire",
        BACKBONE,
        DiffusionConfig(sampler_steps=3),
        backbone=state_of(model),
        embeddings={"seen_00": torch.ones(32)},
    )
    dataset = DiffusersExportDataset(
        filepath=str(tmp_path / "diffusers"), version=Version(None, "2026-01-01T00.00.00.000Z")
    )
    dataset.save(to_diffusers(bundle))
    folder = tmp_path / "diffusers/2026-01-01T00.00.00.000Z/diffusers"
    assert (folder / "unet" / "config.json").is_file()
    assert not list(tmp_path.rglob(".*partial"))
    loaded = DiffusersExportDataset(
        filepath=str(tmp_path / "diffusers"), version=Version(None, None)
    ).load()
    assert loaded.info["clients"] == {"seen_00": "seen"}
    assert loaded.info["sampler_steps"] == 3 and len(loaded.sampler.timesteps) == 3
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[k], v, rtol=0, atol=0)
