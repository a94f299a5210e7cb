"""Does the pretrained SPIRE backbone use the client embeddings?

For each seen client, the DDPM loss of its held-out test images under the newest pretrained
``spire`` bundle, conditioned on: its own embedding, another client's embedding (the client
five places on), the mean embedding, and zeros. Fixed noise and timesteps, the same for every
condition. If the backbone conditions on the embedding, "own" is clearly the lowest.
Prints a table. Usage: python benchmarks/embedding_usage.py [--images 200] [--repeats 10]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _latest import client_splits, newest

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.diffusion import ddpm_loss, make_scheduler, to_model_space


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    version = newest("data/06_models/pretrained")
    bundle = ModelBundleDataset(filepath=str(version / "spire.safetensors")).load()
    model, _ = bundle.build(None)
    sched = make_scheduler(bundle.diffusion_cfg)
    seen = client_splits("seen")
    table = torch.stack([bundle.embeddings[s.client] for s in seen])
    dists = torch.cdist(table, table)
    print(
        f"spire bundle {version.name}: {len(seen)} seen clients, embedding norm "
        f"{table.norm(dim=1).mean():.2f}, mean distance between clients' embeddings "
        f"{dists.sum() / (len(seen) * (len(seen) - 1)):.2f}"
    )

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    conditions = ("own", "other", "mean", "zeros")
    print(f"{'client':>8} " + " ".join(f"{c:>9}" for c in conditions))
    rows = []
    for k, s in enumerate(seen):
        x = to_model_space(s.test_images[: args.images])
        embs = {
            "own": table[k],
            "other": table[(k + 5) % len(seen)],
            "mean": table.mean(0),
            "zeros": torch.zeros_like(table[k]),
        }
        row = []
        for c in conditions:
            g = torch.Generator().manual_seed(k)
            e = embs[c].expand(len(x), -1)
            row.append(
                np.mean([ddpm_loss(denoise, sched, x, e, g).item() for _ in range(args.repeats)])
            )
        rows.append(row)
        print(f"{s.client:>8} " + " ".join(f"{v:>9.5f}" for v in row))
    mean = np.mean(rows, axis=0)
    print(f"{'mean':>8} " + " ".join(f"{v:>9.5f}" for v in mean))
    print(
        f"own vs other: {100 * (mean[1] - mean[0]) / mean[1]:+.2f} % lower loss with the "
        f"client's own embedding"
    )


if __name__ == "__main__":
    main()
