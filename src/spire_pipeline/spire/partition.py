"""Non-IID partitioning of a labelled image set into clients with three roles.

- ``seen`` clients take part in federated pretraining; a validation share of each one's train
  split is held out of pretraining, to justify pretraining choices;
- ``tuning`` clients never take part in pretraining; they are used only to choose adaptation
  hyperparameters;
- ``unseen`` (evaluation) clients never take part in pretraining or tuning; their test splits
  report the unseen-client results.

Every client owns disjoint images; each client's images are split into train (and, for seen
clients, validation) and a held-out test split. Tuning clients have the unseen clients' sizes.
Schemes: ``dirichlet`` (class proportions ~ Dir(alpha)) and ``shards`` (``classes_per_client``
classes per client, equal shares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spire_pipeline.spire.config import PartitionConfig
from spire_pipeline.spire.validation import ParameterError

#: client roles, in the order splits are listed
ROLES = ("seen", "tuning", "unseen")


@dataclass(frozen=True)
class ClientSplit:
    """One client's data: train, validation and test images (N,H,W[,C] uint8) and labels.

    The validation split (seen clients only; empty otherwise) is held out of pretraining.
    """

    client: str
    role: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.val_index is None:  # splits written before validation shares existed
            empty = self.train_images[:0]
            object.__setattr__(self, "val_images", empty)
            object.__setattr__(self, "val_labels", self.train_labels[:0])
            object.__setattr__(self, "val_index", self.train_index[:0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store (one ``.npz`` per client)."""
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "val_images": self.val_images,
            "val_labels": self.val_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
            "train_index": self.train_index,
            "val_index": self.val_index,
            "test_index": self.test_index,
            "role": np.array(self.role),
        }

    @classmethod
    def from_arrays(cls, client: str, arrays: dict[str, np.ndarray]) -> ClientSplit:
        """Rebuild a split from :meth:`to_arrays`'s output."""
        return cls(
            client=client,
            role=str(arrays["role"]),
            **{k: np.asarray(arrays[k]) for k in arrays if k != "role"},
        )


def client_names(
    num_seen: int, num_unseen: int, num_tuning: int = 0
) -> tuple[list[str], list[str]]:
    """Stable client ids: ``seen_00`` ... and ``unseen_00`` ... (see :func:`role_names`)."""
    names = role_names(num_seen, num_unseen, num_tuning)
    return names["seen"], names["unseen"]


def role_names(num_seen: int, num_unseen: int, num_tuning: int = 0) -> dict[str, list[str]]:
    """Client ids per role: ``seen_00`` ..., ``tuning_00`` ..., ``unseen_00`` ..."""
    counts = {"seen": num_seen, "tuning": num_tuning, "unseen": num_unseen}
    width = max(2, len(str(max(*counts.values(), 1) - 1)))
    return {role: [f"{role}_{i:0{width}d}" for i in range(n)] for role, n in counts.items()}


def _test_size(n_total: int, cfg: PartitionConfig) -> int:
    return max(cfg.min_test_size, math.ceil(cfg.test_fraction * n_total))


def client_sizes(cfg: PartitionConfig, pool_size: int) -> tuple[int, int]:
    """Images per seen client and per unseen client (train + test)."""
    n_unseen_test = max(
        cfg.min_test_size,
        math.ceil(cfg.unseen_train_size * cfg.test_fraction / (1 - cfg.test_fraction)),
    )
    n_unseen = cfg.unseen_train_size + n_unseen_test
    small = cfg.num_unseen_clients + cfg.num_tuning_clients
    remaining = pool_size - small * n_unseen
    n_seen = cfg.seen_client_size or remaining // cfg.num_seen_clients
    if n_seen * cfg.num_seen_clients > remaining or n_seen <= cfg.min_test_size:
        key, value = (
            ("seen_client_size", cfg.seen_client_size)
            if cfg.seen_client_size
            else ("num_seen_clients", cfg.num_seen_clients)
        )
        raise ParameterError(
            f"Invalid parameters: parameter data_partitioning.{key} = {value}: asks for more "
            f"images than the data holds: {cfg.num_seen_clients} seen clients x {n_seen} "
            f"(seen_client_size) + {small} unseen and tuning clients x {n_unseen} "
            f"(unseen_train_size {cfg.unseen_train_size} + test) > {pool_size} images available "
            f"(allowed: seen clients of more than min_test_size = {cfg.min_test_size} images that "
            "fit in the data with the others)"
        )
    return n_seen, n_unseen


def _class_proportions(
    cfg: PartitionConfig, num_clients: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    if cfg.scheme == "dirichlet":
        return rng.dirichlet(np.full(num_classes, cfg.alpha), size=num_clients)
    if cfg.classes_per_client > num_classes:
        raise ParameterError(
            f"Invalid parameters: parameter data_partitioning.classes_per_client = "
            f"{cfg.classes_per_client}: the data has only {num_classes} classes"
        )
    # Walk through shuffled copies of the class list so that every class is used evenly.
    props = np.zeros((num_clients, num_classes))
    stream: list[int] = []
    for k in range(num_clients):
        chosen: list[int] = []
        while len(chosen) < cfg.classes_per_client:
            if not stream:
                stream = list(rng.permutation(num_classes))
            c = stream.pop(0)
            if c in chosen:
                stream.append(c)
                if set(stream) <= set(chosen):
                    stream = []
                continue
            chosen.append(c)
        props[k, chosen] = 1.0 / cfg.classes_per_client
    return props


def _draw_counts(
    p: np.ndarray, n: int, available: np.ndarray, rng, exact: bool, culprit: str = ""
) -> np.ndarray:
    """Per-class counts for one client: ``n`` images drawn with class proportions ``p``;
    ``culprit``: the parameter named when the classes cannot supply them."""
    if exact:  # shards: equal shares, remainder to random classes
        counts = np.floor(p * n).astype(int)
        extra = rng.choice(np.flatnonzero(p), size=n - counts.sum(), replace=False)
        counts[extra] += 1
    else:
        counts = rng.multinomial(n, p)
    # Redistribute what a class cannot supply over the classes that still have images,
    # preferring those with the largest proportions.
    over = np.maximum(counts - available, 0)
    counts -= over
    deficit = int(over.sum())
    order = np.argsort(-(p + 1e-12 * rng.random(p.size)))
    while deficit > 0:
        progressed = False
        for c in order:
            if deficit == 0:
                break
            if counts[c] < available[c] and (p[c] > 0 or not exact):
                counts[c] += 1
                deficit -= 1
                progressed = True
        if not progressed:
            raise ParameterError(
                f"Invalid parameters: parameter {culprit or 'data_partitioning'}: the classes "
                f"dealt to a client of {n} images do not hold enough images (allowed: a smaller "
                "seen_client_size or unseen_train_size, fewer clients, or more "
                "classes_per_client)"
            )
    return counts


def partition(images: np.ndarray, labels: np.ndarray, cfg: PartitionConfig) -> list[ClientSplit]:
    """Split ``images``/``labels`` into seen and unseen clients (deterministic in ``cfg.seed``)."""
    labels = np.asarray(labels).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    rng = np.random.default_rng(cfg.seed)
    classes = np.unique(labels)
    names = role_names(cfg.num_seen_clients, cfg.num_unseen_clients, cfg.num_tuning_clients)
    seen_ids, unseen_ids, tuning_ids = names["seen"], names["unseen"], names["tuning"]
    n_seen, n_unseen = client_sizes(cfg, len(labels))
    everyone = seen_ids + unseen_ids + tuning_ids
    props = _class_proportions(cfg, len(everyone), len(classes), rng)
    prop_of = dict(zip(everyone, props.tolist()))

    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    available = np.array([len(p) for p in pools])
    # Small clients first: they must get the classes they were dealt.
    order = (
        [(cid, "unseen", n_unseen) for cid in unseen_ids]
        + [(cid, "tuning", n_unseen) for cid in tuning_ids]
        + [(cid, "seen", n_seen) for cid in seen_ids]
    )
    splits: list[ClientSplit] = []
    for cid, role, n in order:
        p = np.asarray(prop_of[cid])
        size = "seen_client_size" if role == "seen" else "unseen_train_size"
        culprit = f"data_partitioning.{size} = {getattr(cfg, size)}"
        counts = _draw_counts(p, n, available, rng, exact=cfg.scheme == "shards", culprit=culprit)
        idx = np.concatenate([[pools[c].pop() for _ in range(k)] for c, k in enumerate(counts)])
        idx = rng.permutation(idx.astype(np.int64))
        available -= counts
        seen = role == "seen"
        n_test = _test_size(n, cfg) if seen else n - cfg.unseen_train_size
        n_val = round(cfg.validation_fraction * (n - n_test)) if seen else 0
        test_idx = np.sort(idx[:n_test])
        val_idx = np.sort(idx[n_test : n_test + n_val])
        train_idx = np.sort(idx[n_test + n_val :])
        splits.append(
            ClientSplit(
                client=cid,
                role=role,
                train_images=images[train_idx],
                train_labels=labels[train_idx],
                test_images=images[test_idx],
                test_labels=labels[test_idx],
                train_index=train_idx,
                test_index=test_idx,
                val_images=images[val_idx],
                val_labels=labels[val_idx],
                val_index=val_idx,
            )
        )
    splits.sort(key=lambda s: (ROLES.index(s.role), s.client))
    return splits


def partition_table(splits: list[ClientSplit], num_classes: int) -> pd.DataFrame:
    """One row per client: ``client``, ``role``, ``n_train``, ``n_val``, ``n_test`` and a count
    per class."""
    rows = []
    for s in splits:
        all_labels = np.concatenate([s.train_labels, s.val_labels, s.test_labels])
        counts = np.bincount(all_labels, minlength=num_classes)
        row = {
            "client": s.client,
            "role": s.role,
            "n_train": len(s.train_labels),
            "n_val": len(s.val_labels),
            "n_test": len(s.test_labels),
        }
        row.update({f"class_{c}": int(counts[c]) for c in range(num_classes)})
        rows.append(row)
    return pd.DataFrame(rows)


def class_columns(table: pd.DataFrame) -> list[str]:
    """The per-class count columns of a partition table."""
    return [c for c in table.columns if c.startswith("class_")]


def partition_statistics(table: pd.DataFrame) -> dict[str, float]:
    """Skew and size statistics of a partition (metrics for MLflow)."""
    counts = table[class_columns(table)].to_numpy(dtype=float)
    dist = counts / counts.sum(axis=1, keepdims=True)
    global_dist = counts.sum(axis=0) / counts.sum()
    tv = 0.5 * np.abs(dist - global_dist).sum(axis=1)
    seen = (table["role"] == "seen").to_numpy()
    unseen = (table["role"] == "unseen").to_numpy()
    nonzero = (counts > 0).sum(axis=1)
    stats = {
        "num_clients": float(len(table)),
        "num_seen_clients": float(seen.sum()),
        "num_unseen_clients": float(unseen.sum()),
        "num_tuning_clients": float((table["role"] == "tuning").sum()),
        "mean_tv_distance": float(tv.mean()),
        "mean_tv_distance_seen": float(tv[seen].mean()) if seen.any() else float("nan"),
        "mean_classes_per_client": float(nonzero.mean()),
        "total_train_images": float(table["n_train"].sum()),
        "total_test_images": float(table["n_test"].sum()),
        "mean_n_train_seen": float(table.loc[seen, "n_train"].mean()) if seen.any() else 0.0,
        "mean_n_train_unseen": (
            float(table.loc[unseen, "n_train"].mean()) if unseen.any() else 0.0
        ),
    }
    return stats


def splits_from_partitions(partitions: dict) -> dict[str, ClientSplit]:
    """Client splits from a partitioned dataset's load (values: arrays or loader callables)."""
    return {
        cid: ClientSplit.from_arrays(cid, load() if callable(load) else load)
        for cid, load in sorted(partitions.items())
    }
