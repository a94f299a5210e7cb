"""The client-specificity classifier and measures (spire/specificity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spire_pipeline.spire.specificity import (
    CONDITIONING_COLUMNS,
    accuracy,
    cached_classifier,
    conditioning_summary,
    conditioning_table,
    label_histogram,
    predict,
    share_in_classes,
    train_classifier,
    tv_distance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_classifier_learns_fashion_mnist_and_is_seeded(fashion_mnist) -> None:
    train = fashion_mnist.train_slice(2000)
    test = fashion_mnist.test_slice(1000)
    net = train_classifier(train["images"], train["labels"], 10, seed=0, epochs=1)
    acc = accuracy(net, test["images"], test["labels"])
    assert acc > 0.6, acc  # chance is 0.1
    again = train_classifier(train["images"], train["labels"], 10, seed=0, epochs=1)
    np.testing.assert_array_equal(predict(again, test["images"]), predict(net, test["images"]))
    other = train_classifier(train["images"], train["labels"], 10, seed=1, epochs=1)
    assert not np.array_equal(predict(other, test["images"]), predict(net, test["images"]))


def test_share_histogram_and_total_variation_by_hand() -> None:
    predicted = np.array([1, 1, 7, 3, 7, 7, 1, 0])
    assert share_in_classes(predicted, [1, 7]) == 6 / 8
    hist = label_histogram(predicted, 10)
    assert hist[1] == 3 / 8 and hist[7] == 3 / 8 and hist[3] == 1 / 8 and hist.sum() == 1
    target = np.zeros(10)
    target[[1, 7]] = 0.5
    # |3/8-1/2| + |3/8-1/2| + 1/8 + 1/8 = 1/2, halved
    assert tv_distance(predicted, target) == pytest.approx(0.25)
    assert tv_distance(np.array([1, 7]), target) == 0.0
    assert tv_distance(np.array([2, 2]), target) == 1.0
    with pytest.raises(ValueError, match="probability vector"):
        tv_distance(predicted, np.ones(10))


class _ByBrightness(torch.nn.Module):
    """A stand-in classifier: label = the image's mean pixel // 26 (0..9)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = ((x.mean(dim=(1, 2, 3)) + 1) * 127.5 // 26).long().clamp(0, 9)
        return torch.nn.functional.one_hot(level, 10).float()


def _images(levels: list[int]) -> np.ndarray:
    return np.stack([np.full((8, 8), 26 * v + 5, np.uint8) for v in levels])


def test_conditioning_table_labels_each_sample_set_once_against_its_client() -> None:
    shared = _images([3, 3, 3, 9])  # an unconditional model's samples, used for two clients
    samples = {
        ("seen_00", "spire", "pretrained"): _images([1, 1, 2, 5]),
        ("seen_00", "fedavg", "pretrained"): shared,
        ("unseen_00", "fedavg", "pretrained"): shared,
        ("nobody", "spire", "pretrained"): shared,  # no distribution: left out
    }
    dists = {"seen_00": np.eye(10)[1] * 0.5 + np.eye(10)[2] * 0.5, "unseen_00": np.eye(10)[3]}
    roles = {"seen_00": "seen", "unseen_00": "unseen"}
    table = conditioning_table(samples, dists, roles, _ByBrightness(), accuracy=0.9)
    assert list(table.columns) == CONDITIONING_COLUMNS and len(table) == 3
    t = table.set_index(["client", "method"])
    assert t.loc[("seen_00", "spire"), "own_class_share"] == 0.75
    # predicted {1: 1/2, 2: 1/4, 5: 1/4} against {1: 1/2, 2: 1/2}: TV = (1/4 + 1/4) / 2
    assert t.loc[("seen_00", "spire"), "tv_distance"] == pytest.approx(0.25)
    assert t.loc[("seen_00", "fedavg"), "own_class_share"] == 0.0
    assert t.loc[("unseen_00", "fedavg"), "tv_distance"] == pytest.approx(0.25)
    assert t.loc[("unseen_00", "fedavg"), "role"] == "unseen"
    summary = conditioning_summary(table)
    assert set(summary["method"]) == {"spire", "fedavg"} and summary["clients"].sum() == 3


def test_cached_classifier_is_trained_once_per_content(fashion_mnist, tmp_path) -> None:
    train = fashion_mnist.train_slice(300)
    net = cached_classifier(train["images"], train["labels"], 10, 0, epochs=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("classifier-*.pt")
    again = cached_classifier(train["images"], train["labels"], 10, 0, epochs=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(predict(again, train["images"]), predict(net, train["images"]))
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1
    other = fashion_mnist.train_slice(300, start=300)
    cached_classifier(other["images"], other["labels"], 10, 0, epochs=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 2 and path.exists()
