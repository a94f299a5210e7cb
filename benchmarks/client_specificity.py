"""Do each seen client's samples follow that client's classes?

Trains the core's small CNN classifier (``spire/specificity.py``, seeded) on the seen
clients' pooled train splits, then samples ``--samples`` images per seen client from the
newest pretrained ``spire`` bundle (the client's own embedding) and ``fedavg`` bundle (one
shared model), both with their own sampler. A sample *agrees* when the classifier puts it in
one of the client's classes. ``fedavg`` ignores the client, so its agreement is the reference a
client-specific model must beat. The classifier's accuracy on the seen clients' test splits is
printed so its errors can be judged.
Prints a table. Usage: python benchmarks/client_specificity.py [--samples 64] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
from _latest import client_splits, newest
from tqdm.auto import tqdm

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.generate import generate
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.specificity import accuracy, predict, share_in_classes, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seen = client_splits("seen")
    x = np.concatenate([s.train_images for s in seen])
    y = np.concatenate([s.train_labels for s in seen])
    net = train_classifier(x, y, int(y.max()) + 1, args.seed, progress=True)
    acc = accuracy(
        net,
        np.concatenate([s.test_images for s in seen]),
        np.concatenate([s.test_labels for s in seen]),
    )
    version = newest("data/06_models/pretrained")
    bundles = {
        m: ModelBundleDataset(filepath=str(version / f"{m}.safetensors")).load()
        for m in ("spire", "fedavg")
        if (version / f"{m}.safetensors").exists()
    }
    print(
        f"pretrained {version.name}; classifier accuracy on the seen test splits {acc:.3f}; "
        f"{args.samples} samples per client and model"
    )
    print(f"{'client':>8} {'classes':>8} " + " ".join(f"{m:>7}" for m in bundles))
    table = []
    for k, s in enumerate(tqdm(seen, desc="clients", leave=False)):
        classes = np.unique(s.train_labels)
        row = []
        for m, b in bundles.items():
            client = s.client if PRETRAINING[m].per_client else None
            imgs = generate(b, client, args.samples, args.seed + k)
            row.append(share_in_classes(predict(net, imgs), classes))
        table.append(row)
        names = ",".join(str(c) for c in classes)
        print(f"{s.client:>8} {names:>8} " + " ".join(f"{v:>7.2f}" for v in row))
    mean = np.mean(table, axis=0)
    print(f"{'mean':>8} {'':>8} " + " ".join(f"{v:>7.2f}" for v in mean))
    print("share of samples the classifier puts in the client's own classes")


if __name__ == "__main__":
    main()
