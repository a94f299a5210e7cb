"""The client-specificity classifier and measures (spire/specificity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from spire_pipeline.spire.specificity import (
    accuracy,
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
