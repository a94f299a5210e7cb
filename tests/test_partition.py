"""Properties of the non-IID partitioner on real Fashion-MNIST labels and synthetic arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spire_pipeline.spire.config import PartitionConfig
from spire_pipeline.spire.partition import (
    ClientSplit,
    class_columns,
    client_names,
    partition,
    partition_statistics,
    partition_table,
)
from spire_pipeline.spire.validation import ParameterError

#: conf/base's data_partitioning section
BASE = dict(
    seed=0,
    scheme="shards",
    alpha=0.3,
    classes_per_client=2,
    num_seen_clients=10,
    num_unseen_clients=4,
    seen_client_size=2000,
    unseen_train_size=200,
    test_fraction=0.2,
    min_test_size=100,
)
#: conf/quick's
QUICK = {**BASE, "num_seen_clients": 4, "num_unseen_clients": 2, "seen_client_size": 300}
QUICK.update(unseen_train_size=64, min_test_size=48)


@pytest.fixture(scope="module")
def pooled(fashion_mnist) -> tuple[np.ndarray, np.ndarray]:
    """All 70k Fashion-MNIST images and labels, train and test pooled (as the node does)."""
    images = np.concatenate([fashion_mnist.train_images, fashion_mnist.test_images])
    labels = np.concatenate([fashion_mnist.train_labels, fashion_mnist.test_labels])
    return images, labels.astype(np.int64)


def synthetic(n_per_class: int = 300, num_classes: int = 5, rgb: bool = False, seed: int = 0):
    """Images whose pixels encode their own index, so any image can be traced back."""
    n = n_per_class * num_classes
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), n_per_class))
    shape = (n, 4, 4, 3) if rgb else (n, 4, 4)
    images = np.zeros(shape, dtype=np.uint8)
    images[:, 0, 0] = (np.arange(n) % 256)[:, None] if rgb else np.arange(n) % 256
    images[:, 0, 1] = (np.arange(n) // 256)[:, None] if rgb else np.arange(n) // 256
    return images, labels


def _decode(images: np.ndarray) -> np.ndarray:
    """The index that :func:`synthetic` wrote into each image."""
    grey = images[..., 0] if images.ndim == 4 else images
    return grey[:, 0, 0].astype(int) + 256 * grey[:, 0, 1].astype(int)


def _all_indices(splits: list[ClientSplit]) -> list[np.ndarray]:
    return [ix for s in splits for ix in (s.train_index, s.val_index, s.test_index)]


def assert_valid_partition(splits, images, labels, cfg: PartitionConfig) -> None:
    """Disjointness, consistency of arrays with indices, and every size rule."""
    seen_ids, unseen_ids = client_names(cfg.num_seen_clients, cfg.num_unseen_clients)
    assert [s.client for s in splits] == seen_ids + unseen_ids
    assert [s.role for s in splits] == ["seen"] * len(seen_ids) + ["unseen"] * len(unseen_ids)
    # no image belongs to two clients, nor to both splits of one client
    everything = np.concatenate(_all_indices(splits))
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0 and everything.max() < len(labels)
    all_test = np.concatenate([s.test_index for s in splits])
    all_train = np.concatenate([s.train_index for s in splits])
    assert not np.intersect1d(all_test, all_train).size, "a test image is in a train split"
    for s in splits:
        for kind in ("train", "test"):
            index = getattr(s, f"{kind}_index")
            np.testing.assert_array_equal(getattr(s, f"{kind}_images"), images[index])
            np.testing.assert_array_equal(getattr(s, f"{kind}_labels"), labels[index])
            assert getattr(s, f"{kind}_images").dtype == images.dtype
        n_train, n_test = len(s.train_index), len(s.test_index)
        total = n_train + n_test
        assert n_train > 0
        assert n_test >= cfg.min_test_size
        assert n_test >= cfg.test_fraction * total - 1e-9
        if s.role == "seen" and cfg.seen_client_size is not None:
            assert total == cfg.seen_client_size
        if s.role == "unseen":
            assert n_train == cfg.unseen_train_size
            # the smallest test split that honours both rules
            expected = max(
                cfg.min_test_size,
                math.ceil(cfg.unseen_train_size * cfg.test_fraction / (1 - cfg.test_fraction)),
            )
            assert n_test == expected


# ----------------------------------------------------------------------------- real labels


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
@pytest.mark.parametrize("params", [BASE, QUICK], ids=["base", "quick"])
def test_real_fashion_mnist_partition_is_valid(pooled, scheme, params) -> None:
    images, labels = pooled
    cfg = PartitionConfig(**{**params, "scheme": scheme})
    splits = partition(images, labels, cfg)
    assert_valid_partition(splits, images, labels, cfg)
    seen = [s for s in splits if s.role == "seen"]
    assert sum(len(s.train_index) + len(s.test_index) for s in seen) == (
        cfg.num_seen_clients * cfg.seen_client_size
    )


def test_sharing_all_data_uses_equal_seen_clients(pooled) -> None:
    images, labels = pooled
    cfg = PartitionConfig(**{**BASE, "scheme": "dirichlet", "seen_client_size": None})
    splits = partition(images, labels, cfg)
    assert_valid_partition(splits, images, labels, cfg)
    totals = {len(s.train_index) + len(s.test_index) for s in splits if s.role == "seen"}
    unseen_total = sum(len(s.train_index) + len(s.test_index) for s in splits if s.role == "unseen")
    assert totals == {(len(labels) - unseen_total) // cfg.num_seen_clients}


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_same_seed_same_split_other_seed_other_split(pooled, scheme) -> None:
    images, labels = pooled
    cfg = PartitionConfig(**{**QUICK, "scheme": scheme})
    a = partition(images, labels, cfg)
    b = partition(images, labels, cfg)
    c = partition(images, labels, cfg.model_copy(update={"seed": 1}))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.train_index, y.train_index)
        np.testing.assert_array_equal(x.test_index, y.test_index)
        np.testing.assert_array_equal(x.train_images, y.train_images)
    assert any(not np.array_equal(x.train_index, z.train_index) for x, z in zip(a, c))


def test_shards_give_exactly_classes_per_client(pooled) -> None:
    images, labels = pooled
    for k in (1, 2, 3):
        cfg = PartitionConfig(**{**BASE, "classes_per_client": k})
        splits = partition(images, labels, cfg)
        for s in splits:
            classes = np.unique(np.concatenate([s.train_labels, s.test_labels]))
            assert len(classes) == k, (s.client, classes)
        table = partition_table(splits, num_classes=10)
        assert partition_statistics(table)["mean_classes_per_client"] == k


def test_dirichlet_skew_grows_as_alpha_shrinks(pooled) -> None:
    images, labels = pooled
    for seed in (0, 1):
        tv = {}
        for alpha in (0.05, 100.0):
            cfg = PartitionConfig(**{**BASE, "scheme": "dirichlet", "alpha": alpha, "seed": seed})
            table = partition_table(partition(images, labels, cfg), num_classes=10)
            tv[alpha] = partition_statistics(table)["mean_tv_distance"]
        assert tv[0.05] > tv[100.0] + 0.3, tv
        assert tv[100.0] < 0.2, tv


def test_partition_table_and_statistics(pooled) -> None:
    images, labels = pooled
    cfg = PartitionConfig(**QUICK)
    splits = partition(images, labels, cfg)
    table = partition_table(splits, num_classes=10)
    assert list(table.columns) == ["client", "role", "n_train", "n_val", "n_test"] + [
        f"class_{c}" for c in range(10)
    ]
    assert class_columns(table) == [f"class_{c}" for c in range(10)]
    assert list(table["client"]) == [s.client for s in splits]
    assert list(table["role"]) == [s.role for s in splits]
    for row, s in zip(table.itertuples(), splits):
        assert row.n_train == len(s.train_index) and row.n_test == len(s.test_index)
        counts = np.bincount(np.concatenate([s.train_labels, s.test_labels]), minlength=10)
        assert [getattr(row, f"class_{c}") for c in range(10)] == counts.tolist()
    stats = partition_statistics(table)
    assert stats["num_clients"] == 6
    assert stats["num_seen_clients"] == 4 and stats["num_unseen_clients"] == 2
    assert stats["total_train_images"] == table["n_train"].sum()
    assert stats["total_test_images"] == table["n_test"].sum()
    assert stats["mean_n_train_unseen"] == QUICK["unseen_train_size"]
    assert 0 <= stats["mean_tv_distance"] <= 1
    assert all(isinstance(v, float) for v in stats.values())


def test_client_split_array_round_trip(pooled) -> None:
    images, labels = pooled
    split = partition(images, labels, PartitionConfig(**QUICK))[0]
    arrays = split.to_arrays()
    assert set(arrays) == {
        f"{split}_{kind}"
        for split in ("train", "val", "test")
        for kind in ("images", "labels", "index")
    } | {"role"}
    back = ClientSplit.from_arrays(split.client, arrays)
    assert back.role == split.role == "seen"
    np.testing.assert_array_equal(back.train_images, split.train_images)
    np.testing.assert_array_equal(back.test_index, split.test_index)


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_synthetic_images_follow_their_indices(scheme, rgb) -> None:
    images, labels = synthetic(rgb=rgb)
    cfg = PartitionConfig(
        scheme=scheme,
        alpha=0.5,
        classes_per_client=2,
        num_seen_clients=3,
        num_unseen_clients=2,
        seen_client_size=200,
        unseen_train_size=40,
        test_fraction=0.25,
        min_test_size=20,
        seed=3,
    )
    splits = partition(images, labels, cfg)
    assert_valid_partition(splits, images, labels, cfg)
    for s in splits:
        np.testing.assert_array_equal(_decode(s.train_images), s.train_index)
        np.testing.assert_array_equal(_decode(s.test_images), s.test_index)
        assert s.train_images.shape[1:] == images.shape[1:]


def test_labels_need_not_be_contiguous() -> None:
    images, labels = synthetic(num_classes=3)
    labels = np.array([2, 5, 9])[labels]
    cfg = PartitionConfig(
        num_seen_clients=2,
        num_unseen_clients=1,
        seen_client_size=100,
        unseen_train_size=30,
        min_test_size=10,
        classes_per_client=1,
    )
    splits = partition(images, labels, cfg)
    assert_valid_partition(splits, images, labels, cfg)
    table = partition_table(splits, num_classes=10)
    assert table[["class_0", "class_1", "class_3"]].to_numpy().sum() == 0
    assert (table[["class_2", "class_5", "class_9"]].to_numpy() > 0).sum(axis=1).tolist() == [
        1,
        1,
        1,
    ]


def test_no_unseen_clients() -> None:
    images, labels = synthetic()
    cfg = PartitionConfig(
        num_seen_clients=3, num_unseen_clients=0, seen_client_size=150, min_test_size=10
    )
    splits = partition(images, labels, cfg)
    assert_valid_partition(splits, images, labels, cfg)
    assert [s.role for s in splits] == ["seen"] * 3


def test_client_names_are_stable_and_sortable() -> None:
    assert client_names(2, 1) == (["seen_00", "seen_01"], ["unseen_00"])
    seen, unseen = client_names(120, 3)
    assert seen[0] == "seen_000" and seen[-1] == "seen_119" and unseen == sorted(unseen)
    assert seen == sorted(seen)


# ----------------------------------------------------------------------------- too much asked


def test_more_seen_images_than_exist_raise_parameter_error() -> None:
    images, labels = synthetic()  # 1500 images
    cfg = PartitionConfig(
        num_seen_clients=4, num_unseen_clients=0, seen_client_size=400, min_test_size=10
    )
    with pytest.raises(ParameterError, match="seen_client_size") as err:
        partition(images, labels, cfg)
    assert "1500 images available" in str(err.value)


def test_more_unseen_images_than_exist_raise_parameter_error() -> None:
    images, labels = synthetic()
    cfg = PartitionConfig(
        num_seen_clients=1,
        num_unseen_clients=3,
        seen_client_size=200,
        unseen_train_size=600,
        min_test_size=10,
    )
    with pytest.raises(ParameterError, match="unseen_train_size"):
        partition(images, labels, cfg)


def test_sharing_all_data_with_too_little_left_raises() -> None:
    images, labels = synthetic()
    cfg = PartitionConfig(
        num_seen_clients=20, num_unseen_clients=0, seen_client_size=None, min_test_size=100
    )
    with pytest.raises(ParameterError, match="seen_client_size"):
        partition(images, labels, cfg)


def test_more_classes_per_client_than_classes_raise_parameter_error() -> None:
    images, labels = synthetic(num_classes=3)
    cfg = PartitionConfig(
        num_seen_clients=2,
        num_unseen_clients=0,
        seen_client_size=100,
        min_test_size=10,
        classes_per_client=4,
    )
    with pytest.raises(ParameterError, match=r"data_partitioning\.classes_per_client = 4"):
        partition(images, labels, cfg)


def test_shards_whose_classes_run_out_raise_parameter_error() -> None:
    # 2 classes x 300 images: enough for 3 clients x 190 images, but with one class per
    # client, two of them share a class and need 380 of its 300 images
    images, labels = synthetic(num_classes=2)
    cfg = PartitionConfig(
        num_seen_clients=3,
        num_unseen_clients=0,
        seen_client_size=190,
        min_test_size=10,
        classes_per_client=1,
    )
    with pytest.raises(ParameterError, match="seen_client_size"):
        partition(images, labels, cfg)


def test_mismatched_images_and_labels_are_rejected() -> None:
    images, labels = synthetic()
    with pytest.raises(ValueError, match="labels"):
        partition(images[:-1], labels, PartitionConfig(seen_client_size=200, min_test_size=10))


# ----------------------------------------------------------------------------- roles


def test_tuning_clients_and_validation_shares(pooled) -> None:
    """Tuning clients have the unseen clients' sizes; seen clients hold out a validation share
    of their train split; train, validation and test never overlap, within or across clients."""
    images, labels = pooled
    cfg = PartitionConfig(**{**BASE, "num_tuning_clients": 3, "validation_fraction": 0.1})
    splits = partition(images, labels, cfg)
    roles = [s.role for s in splits]
    assert roles == ["seen"] * 10 + ["tuning"] * 3 + ["unseen"] * 4
    assert [s.client for s in splits if s.role == "tuning"] == [
        "tuning_00",
        "tuning_01",
        "tuning_02",
    ]
    everything = np.concatenate(_all_indices(splits))
    assert len(np.unique(everything)) == len(everything)
    for s in splits:
        np.testing.assert_array_equal(s.val_images, images[s.val_index])
        np.testing.assert_array_equal(s.val_labels, labels[s.val_index])
        if s.role == "seen":
            n_fit = len(s.train_index) + len(s.val_index)
            assert len(s.val_index) == round(0.1 * n_fit) > 0
            assert n_fit + len(s.test_index) == 2000
        else:
            assert len(s.val_index) == 0 and len(s.train_index) == cfg.unseen_train_size
    unseen = [s for s in splits if s.role == "unseen"]
    tuning = [s for s in splits if s.role == "tuning"]
    assert {len(s.test_index) for s in tuning} == {len(s.test_index) for s in unseen}
    # shards: each tuning client was dealt classes_per_client classes, like an unseen client
    assert all(len(np.unique(s.train_labels)) == 2 for s in tuning)
    stats = partition_statistics(partition_table(splits, num_classes=10))
    assert stats["num_tuning_clients"] == 3 and stats["num_unseen_clients"] == 4


def test_splits_written_before_validation_shares_still_load(pooled) -> None:
    images, labels = pooled
    split = partition(images, labels, PartitionConfig(**QUICK))[0]
    old = {k: v for k, v in split.to_arrays().items() if not k.startswith("val_")}
    back = ClientSplit.from_arrays(split.client, old)
    assert len(back.val_index) == 0 and back.val_images.shape[1:] == split.train_images.shape[1:]
