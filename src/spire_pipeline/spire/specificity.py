"""Client specificity: do a client's samples follow that client's label distribution?

A small CNN classifier (seeded) is trained on labelled real images; each sample is given its
predicted label. Two measures compare those labels with a client:

- :func:`share_in_classes`: the share of samples predicted in the client's own classes;
- :func:`tv_distance`: the total-variation distance between the samples' predicted label
  histogram and the client's label distribution (0: the same, 1: disjoint), which also fits
  clients that are mixtures of classes.

:func:`conditioning_table` measures both for every (client, method, phase) whose samples KID
drew (the conditioning strength of a run), with a classifier cached by content
(:func:`cached_classifier`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from spire_pipeline.spire.cache_files import read_or_set_aside
from spire_pipeline.spire.diffusion import to_model_space

log = logging.getLogger(__name__)


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


def cached_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    epochs: int = 3,
    batch_size: int = 128,
    cache_dir: Path | str | None = None,
    progress: bool = False,
) -> nn.Module:
    """:func:`train_classifier`, read from ``cache_dir`` while images, labels and settings are
    unchanged (the file name holds a hash of all of them)."""
    images, labels = np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)
    h = hashlib.sha256(f"{num_classes}/{seed}/{epochs}/{batch_size}/{images.shape}".encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    path = None if cache_dir is None else Path(cache_dir) / f"classifier-{h.hexdigest()[:16]}.pt"
    channels = 1 if images.ndim == 3 else images.shape[-1]
    if path is not None and path.exists():
        net = classifier(channels, num_classes)

        def read(p: Path) -> nn.Module:
            return net.load_state_dict(torch.load(p, weights_only=True))

        if read_or_set_aside(path, read, "specificity classifier") is not None:
            log.info("Specificity classifier reused from %s", path)
            return net.eval()
    net = train_classifier(
        images, labels, num_classes, seed, epochs=epochs, batch_size=batch_size, progress=progress
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)
    return net


CONDITIONING_COLUMNS = [
    "client",
    "role",
    "method",
    "phase",
    "n_samples",
    "own_class_share",
    "tv_distance",
    "classifier_accuracy",
]


def conditioning_table(
    samples: Mapping[tuple[str, str, str], np.ndarray],
    distributions: Mapping[str, np.ndarray],
    roles: Mapping[str, str],
    net: nn.Module,
    accuracy: float = float("nan"),
) -> pd.DataFrame:
    """Per (client, method, phase) of ``samples``: the share of samples the classifier puts in
    the client's own classes (those of its ``distributions`` entry with a positive share) and
    the TV distance between their predicted label histogram and that distribution.

    A sample set shared by several jobs (an unconditional model) is labelled once.
    """
    labelled: dict[int, np.ndarray] = {}
    rows = []
    for (client, method, phase), images in sorted(samples.items()):
        if client not in distributions:
            continue
        if id(images) not in labelled:
            labelled[id(images)] = predict(net, images)
        pred, dist = labelled[id(images)], np.asarray(distributions[client], dtype=float)
        rows.append(
            {
                "client": client,
                "role": roles.get(client, ""),
                "method": method,
                "phase": phase,
                "n_samples": len(pred),
                "own_class_share": share_in_classes(pred, np.flatnonzero(dist > 0)),
                "tv_distance": tv_distance(pred, dist),
                "classifier_accuracy": accuracy,
            }
        )
    return pd.DataFrame(rows, columns=CONDITIONING_COLUMNS)


def conditioning_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (phase, role, method): clients, mean own-class share and median TV distance."""
    g = table.groupby(["phase", "role", "method"])
    return g.agg(
        clients=("client", "nunique"),
        own_class_share=("own_class_share", "mean"),
        tv_median=("tv_distance", "median"),
    ).reset_index()
