"""Client specificity: do a client's samples follow that client's label distribution?

A small CNN classifier (seeded) is trained on labelled real images; each sample is given its
predicted label. Two measures compare those labels with a client:

- :func:`share_in_classes`: the share of samples predicted in the client's own classes;
- :func:`tv_distance`: the total-variation distance between the samples' predicted label
  histogram and the client's label distribution (0: the same, 1: disjoint), which also fits
  clients that are mixtures of classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from spire_pipeline.spire.diffusion import to_model_space


def classifier(channels: int, num_classes: int) -> nn.Module:
    """A two-convolution CNN for small images (any size; pooled to 7 x 7)."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7),
        nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )  # fmt: skip


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    progress: bool = False,
) -> nn.Module:
    """A classifier trained on uint8 ``images`` (N,H,W[,C]) with Adam; seeded, without
    touching the global random state."""
    x = to_model_space(images)
    y = torch.as_tensor(np.asarray(labels)).long()
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images (>0), got {len(x)} and {len(y)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = classifier(x.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="classifier epochs", disable=not progress, leave=False):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.inference_mode()
def predict(net: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted labels of uint8 ``images`` (N,H,W[,C])."""
    x = to_model_space(images)
    out = [net(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``images`` the classifier labels correctly."""
    return float(np.mean(predict(net, images) == np.asarray(labels)))


def share_in_classes(predicted: np.ndarray, classes: Sequence[int]) -> float:
    """Share of predicted labels among ``classes``."""
    return float(np.isin(np.asarray(predicted), np.asarray(classes)).mean())


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of each label 0..num_classes-1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return counts[:num_classes] / max(1, counts.sum())


def tv_distance(predicted: np.ndarray, distribution: np.ndarray) -> float:
    """Total-variation distance between the predicted labels' histogram and ``distribution``
    (a probability vector over the classes)."""
    dist = np.asarray(distribution, dtype=float)
    if dist.ndim != 1 or not np.isclose(dist.sum(), 1.0) or (dist < 0).any():
        raise ValueError("distribution must be a probability vector")
    return float(0.5 * np.abs(label_histogram(predicted, len(dist)) - dist).sum())
