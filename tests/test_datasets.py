"""IDX files, the project's Kedro datasets, the Fashion-MNIST setup, and a raw-data swap."""

from __future__ import annotations

import gzip
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, DatasetError, Version
from kedro.io.core import generate_timestamp
from kedro.runner import SequentialRunner

from spire_pipeline import data_setup
from spire_pipeline.datasets import (
    IDXImageDataset,
    NpzDataset,
    NpzImageDataset,
    VersionedPartitionedDataset,
)
from spire_pipeline.pipelines.data_partitioning import create_pipeline
from spire_pipeline.spire.idx import IDXFormatError, parse_idx, read_idx, write_idx
from spire_pipeline.spire.partition import ClientSplit

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
HOW_TO = "make data"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _grey(n: int = 12, h: int = 5, w: int = 4) -> np.ndarray:
    return _rng().integers(0, 256, size=(n, h, w), dtype=np.uint8)


def _labels(n: int = 12, classes: int = 3) -> np.ndarray:
    return _rng(1).integers(0, classes, size=n).astype(np.uint8)


# ----------------------------------------------------------------------------- IDX format

IDX_ARRAYS = {
    "uint8": _grey(),
    "int8": _rng().integers(-128, 128, size=(3, 4), dtype=np.int8),
    "int16": _rng().integers(-3000, 3000, size=(7,), dtype=np.int16),
    "int32": _rng().integers(-(2**31), 2**31 - 1, size=(2, 3, 2), dtype=np.int32),
    "float32": _rng().standard_normal((4, 3)).astype(np.float32),
    "float64": _rng().standard_normal((2, 2, 2, 2)),
    "big-endian int32": np.arange(6, dtype=">i4").reshape(2, 3),
    "labels": _labels(),
}


@pytest.mark.parametrize("suffix", [".gz", ""], ids=["gz", "plain"])
@pytest.mark.parametrize("name", list(IDX_ARRAYS))
def test_idx_round_trip(tmp_path, name, suffix) -> None:
    array = IDX_ARRAYS[name]
    path = tmp_path / f"array-idx{array.ndim}-ubyte{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("=")  # always native byte order
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout(tmp_path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 4), dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [2, 3, 4]
    assert len(raw) == 16 + 24
    # compression follows the name unless asked for explicitly
    write_idx(tmp_path / "y.gz", np.zeros(3, dtype=np.uint8), compress=False)
    assert (tmp_path / "y.gz").read_bytes()[:2] != b"\x1f\x8b"
    assert read_idx(tmp_path / "y.gz").tolist() == [0, 0, 0]


def test_idx_rejects_bad_bytes_and_dtypes(tmp_path) -> None:
    with pytest.raises(IDXFormatError, match="bad magic"):
        parse_idx(b"\x01\x00\x08\x01" + bytes(8))
    with pytest.raises(IDXFormatError, match="unknown IDX data type"):
        parse_idx(b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(IDXFormatError, match="truncated IDX header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


def test_real_fashion_mnist_files(fashion_mnist) -> None:
    assert fashion_mnist.train_images.shape == (60000, 28, 28)
    assert fashion_mnist.test_images.shape == (10000, 28, 28)
    assert fashion_mnist.train_images.dtype == np.uint8
    assert set(np.unique(fashion_mnist.train_labels)) == set(range(10))
    assert np.bincount(fashion_mnist.test_labels).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- IDXImageDataset


def _idx_pair(folder: Path, images: np.ndarray, labels: np.ndarray, suffix: str = ".gz"):
    images_path = folder / f"images-idx3-ubyte{suffix}"
    labels_path = folder / f"labels-idx1-ubyte{suffix}"
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    return images_path, labels_path


@pytest.mark.parametrize("suffix", [".gz", ""], ids=["gz", "plain"])
def test_idx_image_dataset_loads(tmp_path, suffix) -> None:
    images, labels = _grey(), _labels()
    images_path, labels_path = _idx_pair(tmp_path, images, labels, suffix)
    ds = IDXImageDataset(images_filepath=str(images_path), labels_filepath=str(labels_path))
    assert ds.exists()
    data = ds.load()
    assert set(data) == {"images", "labels"}
    np.testing.assert_array_equal(data["images"], images)
    assert data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["labels"], labels)
    assert data["labels"].dtype == np.int64
    with pytest.raises(DatasetError, match="read-only"):
        ds.save(data)


def test_idx_image_dataset_loads_fashion_mnist(fashion_mnist_dir) -> None:
    ds = IDXImageDataset(
        images_filepath=str(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"),
        labels_filepath=str(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz"),
    )
    data = ds.load()
    assert data["images"].shape == (10000, 28, 28)
    assert data["labels"].shape == (10000,)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_missing_idx_file_names_it_and_how_to_get_it(tmp_path, which) -> None:
    images_path, labels_path = _idx_pair(tmp_path, _grey(), _labels())
    missing = images_path if which == "images" else labels_path
    missing.unlink()
    ds = IDXImageDataset(images_filepath=str(images_path), labels_filepath=str(labels_path))
    assert not ds.exists()
    with pytest.raises(DatasetError) as err:
        ds.load()
    message = str(err.value)
    assert f"{missing}: file not found" in message
    assert HOW_TO in message
    assert message.count(str(missing)) == 1


@pytest.mark.parametrize("suffix", [".gz", ""], ids=["gz", "plain"])
def test_truncated_idx_file_names_it_and_how_to_get_it(tmp_path, suffix) -> None:
    images_path, labels_path = _idx_pair(tmp_path, _grey(n=50), _labels(n=50), suffix)
    raw = images_path.read_bytes()
    images_path.write_bytes(raw[: len(raw) // 2])
    ds = IDXImageDataset(images_filepath=str(images_path), labels_filepath=str(labels_path))
    with pytest.raises(DatasetError) as err:
        ds.load()
    message = str(err.value)
    assert str(images_path) in message
    assert "corrupt" in message
    assert HOW_TO in message


def test_idx_image_dataset_checks_the_arrays(tmp_path) -> None:
    images_path, labels_path = _idx_pair(tmp_path, _grey(n=12), _labels(n=11))
    ds = IDXImageDataset(images_filepath=str(images_path), labels_filepath=str(labels_path))
    with pytest.raises(DatasetError, match=r"labels must have shape \(12,\)"):
        ds.load()
    write_idx(images_path, _grey(n=11).astype(np.int16))
    with pytest.raises(DatasetError, match="images must be uint8, got int16"):
        ds.load()


# ----------------------------------------------------------------------------- NpzImageDataset


@pytest.mark.parametrize("shape", [(10, 6, 5), (10, 6, 5, 3), (10, 6, 5, 1)], ids=str)
def test_npz_image_dataset_loads_grey_and_rgb(tmp_path, shape) -> None:
    images = _rng().integers(0, 256, size=shape, dtype=np.uint8)
    labels = np.arange(10) % 4
    path = tmp_path / "images.npz"
    np.savez(path, images=images, labels=labels)
    data = NpzImageDataset(filepath=str(path)).load()
    np.testing.assert_array_equal(data["images"], images)
    np.testing.assert_array_equal(data["labels"], labels)
    assert data["labels"].dtype == np.int64


def test_npz_image_dataset_custom_keys_and_save(tmp_path) -> None:
    ds = NpzImageDataset(filepath=str(tmp_path / "sub" / "set.npz"), images_key="x", labels_key="y")
    assert not ds.exists()
    images, labels = _grey(), _labels()
    ds.save({"images": images, "labels": labels})
    assert ds.exists()
    with np.load(tmp_path / "sub" / "set.npz") as npz:
        assert sorted(npz.files) == ["x", "y"]
    data = ds.load()
    np.testing.assert_array_equal(data["images"], images)
    np.testing.assert_array_equal(data["labels"], labels)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"images": _grey()}, r"missing array\(s\) \['labels'\]; it holds \['images'\]"),
        ({"pictures": _grey(), "labels": _labels()}, r"missing array\(s\) \['images'\]"),
        ({"images": _grey().astype(np.float32), "labels": _labels()}, "must be uint8, got float32"),
        ({"images": _grey(), "labels": _labels().astype(float)}, "non-negative integers"),
        ({"images": _grey(), "labels": -np.ones(12, dtype=int)}, "non-negative integers"),
        ({"images": _grey(), "labels": _labels(n=5)}, r"labels must have shape \(12,\)"),
        ({"images": np.zeros((12, 5, 5, 2), np.uint8), "labels": _labels()}, "C in \\(1, 3\\)"),
        ({"images": np.zeros((12, 25), np.uint8), "labels": _labels()}, r"shape \(N,H,W\)"),
    ],
    ids=[
        "no-labels",
        "no-images",
        "float-images",
        "float-labels",
        "negative-labels",
        "label-count",
        "two-channels",
        "flat-images",
    ],
)
def test_npz_image_dataset_rejects_bad_files(tmp_path, arrays, expected) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=expected) as err:
        NpzImageDataset(filepath=str(path)).load()
    assert str(path) in str(err.value)


def test_npz_image_dataset_missing_or_unreadable_file(tmp_path) -> None:
    path = tmp_path / "none.npz"
    with pytest.raises(DatasetError) as err:
        NpzImageDataset(filepath=str(path)).load()
    assert f"{path}: file not found" in str(err.value) and HOW_TO in str(err.value)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        NpzImageDataset(filepath=str(path)).load()


# ----------------------------------------------------------------------------- NpzDataset


def _arrays() -> dict[str, np.ndarray]:
    return {
        "train_images": _grey(),
        "train_labels": _labels().astype(np.int64),
        "weights": _rng().standard_normal((3, 2)).astype(np.float32),
        "role": np.array("seen"),
    }


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key])
        assert value.dtype == b[key].dtype


def test_npz_dataset_round_trip(tmp_path) -> None:
    ds = NpzDataset(filepath=str(tmp_path / "d" / "arrays.npz"))
    assert not ds.exists()
    ds.save(_arrays())
    assert ds.exists()
    loaded = ds.load()
    _assert_same(loaded, _arrays())
    assert str(loaded["role"]) == "seen"


def test_npz_dataset_versioning(tmp_path) -> None:
    path = str(tmp_path / "arrays.npz")
    first, second = "2024-01-01T00.00.00.000Z", "2024-06-01T00.00.00.000Z"
    NpzDataset(filepath=path, version=Version(None, first)).save({"x": np.arange(3)})
    NpzDataset(filepath=path, version=Version(None, second)).save({"x": np.arange(5)})
    assert (tmp_path / "arrays.npz" / first / "arrays.npz").is_file()
    assert (tmp_path / "arrays.npz" / second / "arrays.npz").is_file()
    assert len(NpzDataset(filepath=path, version=Version(None, None)).load()["x"]) == 5
    assert len(NpzDataset(filepath=path, version=Version(first, None)).load()["x"]) == 3
    with pytest.raises(DatasetError, match="must not exist"):
        NpzDataset(filepath=path, version=Version(None, second)).save({"x": np.arange(1)})
    empty = NpzDataset(filepath=str(tmp_path / "none.npz"), version=Version(None, None))
    assert not empty.exists()
    with pytest.raises(DatasetError):
        empty.load()


def test_npz_dataset_rejects_unreadable_file(tmp_path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        NpzDataset(filepath=str(tmp_path / "broken.npz")).load()


# ----------------------------------------------------------------------------- partitions


def _partitions(path: Path, version: Version | None) -> VersionedPartitionedDataset:
    return VersionedPartitionedDataset(
        path=str(path),
        dataset="spire_pipeline.datasets.NpzDataset",
        filename_suffix=".npz",
        version=version,
    )


def _load_all(ds: VersionedPartitionedDataset) -> dict[str, dict[str, np.ndarray]]:
    return {pid: load() for pid, load in ds.load().items()}


def test_versioned_partitions_save_into_a_version_folder(tmp_path) -> None:
    base = tmp_path / "client_splits"
    old, new = "2024-01-01T00.00.00.000Z", "2024-06-01T00.00.00.000Z"
    _partitions(base, Version(None, old)).save(
        {"seen_00": {"x": np.arange(1)}, "seen_01": {"x": np.arange(2)}, "stale": {"x": [9]}}
    )
    saver = _partitions(base, Version(None, new))
    saver.save({"seen_00": {"x": np.arange(3)}, "seen_01": {"x": np.arange(4)}})
    assert sorted(p.name for p in (base / old).iterdir()) == [
        "seen_00.npz",
        "seen_01.npz",
        "stale.npz",
    ]
    assert sorted(p.name for p in (base / new).iterdir()) == ["seen_00.npz", "seen_01.npz"]
    assert sorted(p.name for p in base.iterdir()) == [old, new]  # nothing else left behind
    # the newest folder, and only it: the stale partition of the old version is not loaded
    for loader in (saver, _partitions(base, Version(None, None))):
        loaded = _load_all(loader)
        assert sorted(loaded) == ["seen_00", "seen_01"]
        assert len(loaded["seen_00"]["x"]) == 3
    # a pinned load version
    assert sorted(_load_all(_partitions(base, Version(old, None)))) == [
        "seen_00",
        "seen_01",
        "stale",
    ]
    assert _partitions(base, Version(None, None)).exists()
    with pytest.raises(DatasetError, match="must not exist"):
        _partitions(base, Version(None, new)).save({"a": {"x": np.arange(1)}})


def test_versioned_partitions_never_load_a_half_saved_version(tmp_path) -> None:
    base = tmp_path / "client_splits"
    old, new = "2024-01-01T00.00.00.000Z", "2024-06-01T00.00.00.000Z"
    _partitions(base, Version(None, old)).save({"a": {"x": np.arange(1)}})
    with pytest.raises(DatasetError):
        # partitions are saved in sorted order: "a" is written, then "b" fails
        _partitions(base, Version(None, new)).save({"a": {"x": np.arange(2)}, "b": "not a dict"})
    assert not (base / new).exists()
    assert sorted(_load_all(_partitions(base, Version(None, None)))) == ["a"]
    assert len(_load_all(_partitions(base, Version(None, None)))["a"]["x"]) == 1


def test_versioned_partitions_without_versions(tmp_path) -> None:
    base = tmp_path / "client_splits"
    ds = _partitions(base, Version(None, None))
    assert not ds.exists()
    with pytest.raises(DatasetError, match="No versions found"):
        ds.load()
    plain = _partitions(base / "plain", None)  # unversioned: a plain PartitionedDataset
    plain.save({"a": {"x": np.arange(2)}})
    assert (base / "plain" / "a.npz").is_file()
    assert sorted(_load_all(plain)) == ["a"]


# ----------------------------------------------------------------------------- data_setup


def test_file_digest_and_is_valid_on_wrong_files(tmp_path) -> None:
    name = "train-labels-idx1-ubyte.gz"
    wrong = tmp_path / name
    with gzip.open(wrong, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")
    assert data_setup.file_digest(wrong) != data_setup.FASHION_MNIST_FILES[name][0]
    assert not data_setup.is_valid(wrong)
    wrong.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(data_setup.DataSetupError, match=str(wrong)):
        data_setup.file_digest(wrong)
    assert not data_setup.is_valid(wrong)
    assert not data_setup.is_valid(tmp_path / "t10k-labels-idx1-ubyte.gz")  # missing


def test_is_valid_on_the_real_files(fashion_mnist_dir) -> None:
    assert data_setup.is_valid(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert data_setup.is_valid(fashion_mnist_dir / "train-labels-idx1-ubyte.gz")


def test_obtain_copies_checked_files_and_rejects_wrong_ones(tmp_path, monkeypatch) -> None:
    """``obtain`` with a fake file list and a fake Debian folder: offline, fast."""
    import hashlib

    payload = b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x05\x06"
    debian = tmp_path / "debian"
    debian.mkdir()
    with gzip.open(debian / "tiny-idx1-ubyte.gz", "wb") as fh:
        fh.write(payload)
    files = {"tiny-idx1-ubyte.gz": (hashlib.sha256(payload).hexdigest(), len(payload))}
    monkeypatch.setattr(data_setup, "FASHION_MNIST_FILES", files)
    monkeypatch.setattr(data_setup, "DEBIAN_DIR", debian)
    dest = tmp_path / "dest"
    assert data_setup.obtain(dest, use_apt=False, download=False) == dest
    assert read_idx(dest / "tiny-idx1-ubyte.gz").tolist() == [5, 6]

    # a corrupt file in place and no source: one error naming the file and the way out
    (debian / "tiny-idx1-ubyte.gz").unlink()
    (dest / "tiny-idx1-ubyte.gz").write_bytes(b"corrupt")
    with pytest.raises(data_setup.DataSetupError) as err:
        data_setup.obtain(dest, use_apt=False, download=False)
    assert str(dest / "tiny-idx1-ubyte.gz") in str(err.value)
    assert data_setup.DEBIAN_PACKAGE in str(err.value)
    assert data_setup.main(["--dest", str(dest), "--no-apt", "--no-download"]) == 1


# ----------------------------------------------------------------------------- raw data swap


def _catalog_config(tmp_path: Path, names: set[str]) -> dict[str, dict]:
    """conf/base/catalog.yml's entries for ``names``, with every path moved under tmp_path."""
    config = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    entries = {}
    for name in names & set(config):
        entry = dict(config[name])
        for key in ("filepath", "path", "images_filepath", "labels_filepath"):
            if key in entry:
                entry[key] = str(tmp_path / entry[key])
        entries[name] = entry
    return entries


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_raw_data_from_npz_needs_no_code_change(tmp_path, fashion_mnist) -> None:
    """Point raw_train/raw_test at .npz files in the catalog and run data_partitioning."""
    pipeline = create_pipeline()
    config = _catalog_config(tmp_path, set(pipeline.datasets()))
    assert config["raw_train"]["type"] == "spire_pipeline.datasets.IDXImageDataset"
    train, test = fashion_mnist.train_slice(4000), fashion_mnist.test_slice(1000)
    for name, data in (("raw_train", train), ("raw_test", test)):
        np.savez(tmp_path / f"{name}.npz", **data)
        config[name] = {
            "type": "spire_pipeline.datasets.NpzImageDataset",
            "filepath": str(tmp_path / f"{name}.npz"),
        }
    # kedro-mlflow's metrics dataset needs an MLflow run: keep the metrics in memory
    config.pop("partition_metrics", None)
    params = yaml.safe_load(
        (REPO / "conf" / "quick" / "parameters_data_partitioning.yml").read_text()
    )
    version = generate_timestamp()
    catalog = DataCatalog.from_config(config, save_version=version)
    catalog["params:data_partitioning"] = params["data_partitioning"]
    catalog["params:dataset"] = {}  # own images: no class names, figures show label numbers

    outputs = SequentialRunner().run(pipeline, catalog)

    assert set(outputs) == {"client_splits", "partition_metrics", "partition_heatmap"}
    cfg = params["data_partitioning"]
    n_clients = cfg["num_seen_clients"] + cfg["num_unseen_clients"] + cfg["num_tuning_clients"]
    split_dir = tmp_path / "data" / "05_model_input" / "client_splits" / version
    assert len(list(split_dir.glob("*.npz"))) == n_clients
    splits = {
        cid: ClientSplit.from_arrays(cid, load())
        for cid, load in catalog.load("client_splits").items()
    }
    assert len(splits) == n_clients
    pool = np.concatenate([train["images"], test["images"]])
    for split in splits.values():
        np.testing.assert_array_equal(split.train_images, pool[split.train_index])
    table_path = tmp_path / "data" / "08_reporting" / "partition_table.csv" / version
    table = pd.read_csv(table_path / "partition_table.csv")
    assert sorted(table["client"]) == sorted(splits)
    heatmap = tmp_path / "data" / "08_reporting" / "partition_heatmap.png" / version
    assert (heatmap / "partition_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = outputs["partition_metrics"].load()
    assert metrics["num_clients"] == {"value": float(n_clients), "step": 0}
    assert 0 < metrics["mean_tv_distance"]["value"] <= 1
